"""Small gRPC client helpers for the command line and the tests."""

from __future__ import annotations

import time

import grpc

from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2, services_pb2_grpc


def wait_for_taxonomy(address: str, dataset: str, wait_s: float = 0.0) -> pb.Taxonomy:
    """The dataset's taxonomy from the clusterer, polling up to ``wait_s`` while it is not built yet or the
    service is not up; raises LookupError with the last status otherwise."""
    deadline = time.monotonic() + wait_s
    with grpc.insecure_channel(address) as channel:
        stub = services_pb2_grpc.ClustererServiceStub(channel)
        while True:
            try:
                return stub.GetTaxonomy(services_pb2.GetTaxonomyRequest(dataset=dataset), timeout=10).taxonomy
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE) \
                        or time.monotonic() > deadline:
                    raise LookupError(f"no taxonomy of {dataset!r} from {address}: {exc.code().name}: "
                                      f"{exc.details()}") from None
                time.sleep(0.5)
