"""Small gRPC client helpers for the command line and the tests."""

from __future__ import annotations

import time

import grpc

from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2, services_pb2_grpc


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata a service with an auth token expects."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def wait_for_taxonomy(address: str, dataset: str, wait_s: float = 0.0, token: str | None = None) -> pb.Taxonomy:
    """The dataset's taxonomy from the clusterer, polling up to ``wait_s`` while it is not built yet or the
    service is not up; raises LookupError with the last status otherwise."""
    deadline = time.monotonic() + wait_s
    with grpc.insecure_channel(address) as channel:
        stub = services_pb2_grpc.ClustererServiceStub(channel)
        while True:
            try:
                return stub.GetTaxonomy(services_pb2.GetTaxonomyRequest(dataset=dataset), timeout=10,
                                        metadata=bearer_metadata(token)).taxonomy
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE) \
                        or time.monotonic() > deadline:
                    raise LookupError(f"no taxonomy of {dataset!r} from {address}: {exc.code().name}: "
                                      f"{exc.details()}") from None
                time.sleep(0.5)


class ReviewClient:
    """The review service's gRPC API; with a token, every call carries ``authorization: Bearer <token>``.
    Errors are grpc.RpcError, as the API answers them."""

    PAGE = 500

    def __init__(self, address: str, token: str | None = None, timeout_s: float = 30.0):
        self._channel = grpc.insecure_channel(address)
        self._stub = services_pb2_grpc.ReviewServiceStub(self._channel)
        self._metadata = bearer_metadata(token)
        self._timeout_s = timeout_s

    def pending(self, dataset: str = "") -> list[pb.ReviewTask]:
        """Every pending task (worst score first), page by page."""
        tasks, token = [], ""
        while True:
            page = self._stub.ListTasks(services_pb2.ListTasksRequest(dataset=dataset, page_size=self.PAGE,
                                                                      page_token=token),
                                        timeout=self._timeout_s, metadata=self._metadata)
            tasks += page.tasks
            if not page.next_page_token:
                return tasks
            token = page.next_page_token

    def submit(self, decision: pb.ReviewDecision) -> services_pb2.SubmitDecisionResponse:
        return self._stub.SubmitDecision(services_pb2.SubmitDecisionRequest(decision=decision),
                                         timeout=self._timeout_s, metadata=self._metadata)

    def close_review(self, dataset: str) -> services_pb2.CloseReviewResponse:
        return self._stub.CloseReview(services_pb2.CloseReviewRequest(dataset=dataset), timeout=self._timeout_s,
                                      metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ReviewClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
