"""What `ingest` does once a manifest is listed: announce the dataset, publish one shard of its clips, resumably
(:mod:`auditoryhum.bus.ledger`), with a progress bar.

A shard's progress is its position: how many of its entries (clips and bad rows) are committed. A re-run skips
that many and goes on; the record also holds the manifest's count, so a source that changed since (its positions
no longer the same clips) is refused instead of resumed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from auditoryhum import manifest, topics
from auditoryhum.bus.ledger import Ledger
from auditoryhum.stages.base import dead_letter
from auditoryhum.v1 import pipeline_pb2 as pb

COMMIT_EVERY = 2000  # entries per transaction: a killed run re-publishes at most this many (aborted, unseen)


class FeedError(RuntimeError):
    """The recorded progress does not fit this run (the source changed since)."""


@dataclass(frozen=True)
class Shard:
    dataset: str
    index: int
    count: int
    taxonomy: str = ""
    probe: bool | None = None  # None: local files only (manifest.probes)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.index}-of-{self.count}"

    def size(self, total: int) -> int:
        return len(range(self.index, total, self.count))


def announce(ledger: Ledger, dataset: str, total: int, source: str, taxonomy: str = "") -> bool:
    """Announce ``dataset`` with its ``total`` (once: False when it already was, with the same count)."""
    done = ledger.progress()
    if done is not None:
        if done["expected"] != total:
            raise FeedError(f"dataset {dataset} was announced with {done['expected']} clips (from {done['source']}); "
                            f"{source} now lists {total}: ingest it as another dataset (--dataset, --taxonomy "
                            f"{taxonomy or dataset} to join the same taxonomy)")
        return False
    ledger.send(topics.DATASETS, dataset,
                pb.DatasetAnnouncement(dataset=dataset, expected_clips=total, taxonomy=taxonomy))
    ledger.commit({"expected": total, "source": source})
    return True


def publish(ledger: Ledger, found: manifest.Manifest, shard: Shard, total: int, report: "Report",
            commit_every: int = COMMIT_EVERY) -> dict:
    """Publish ``shard`` of ``found`` (a manifest of ``total`` entries) from where its last run stopped."""
    state = ledger.progress() or {"position": 0, "published": 0, "dead_letters": 0}
    if state.get("expected", total) != total:
        raise FeedError(f"shard {shard.name} was started on a manifest of {state['expected']} clips "
                        f"({state['source']}); {found.source} now lists {total}, so its positions are other clips: "
                        "ingest it as another dataset")
    resumed = state["position"]
    report.start(shard.size(total), resumed)
    published = dead = 0
    position = 0

    def commit(done: bool) -> None:
        ledger.commit({"position": position, "published": state["published"] + published,
                       "dead_letters": state["dead_letters"] + dead, "expected": total, "source": found.source,
                       "done": done})

    for position, entry in enumerate(found.shard(shard.index, shard.count), start=1):
        if position <= resumed:
            continue
        clip = manifest.clip(shard.dataset, entry, probe=shard.probe, taxonomy=shard.taxonomy)
        if entry.error:  # counted in the dataset: review sees it as a clip that will never be labelled
            out = dead_letter("ingest", entry.error, clip)
            ledger.send(out.topic, out.key, out.message)
            dead += 1
        else:
            ledger.send(topics.CLIPS, clip.clip_id, clip)
            published += 1
        if position % commit_every == 0:
            commit(False)
        report.advance(position)
    if not state.get("done") or published or dead:
        commit(True)
    report.finish(position)
    return {"published": published, "dead_letters": dead, "already_published": resumed}


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} clips/s" if task.speed else "- clips/s")


class Report:
    """A rich progress bar on stderr (rate, ETA) when it is a terminal; otherwise silent but for a final line."""

    def __init__(self, label: str, stream: TextIO | None = None, *, terminal: bool | None = None):
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.label, self.resumed, self.started = label, 0, time.monotonic()
        self._progress = self._task = None
        self._last = 0

    def start(self, size: int, resumed: int) -> None:
        self.resumed, self.started = resumed, time.monotonic()
        if self.terminal:
            console = Console(file=self.stream, force_terminal=True)
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
                                      TimeRemainingColumn(), console=console, speed_estimate_period=10)
            self._progress.start()
            self._task = self._progress.add_task(self._described(), total=size, completed=resumed)

    def _described(self) -> str:
        return self.label + (f" ({self.resumed:,} already published, skipped)" if self.resumed else "")

    def advance(self, position: int) -> None:
        if self._progress is not None and position - self._last >= 100:
            self._progress.update(self._task, completed=position)
            self._last = position

    def finish(self, position: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=position)
            self._progress.stop()

    def line(self, result: dict) -> None:
        """The final line, terminal or not."""
        seconds = time.monotonic() - self.started
        done = result["published"] + result["dead_letters"]
        self.stream.write(f"{self.label}: {result['published']:,} published, {result['dead_letters']:,} dead letters, "
                          f"{result['already_published']:,} already published (skipped), "
                          f"{result.get('repeats', 0):,} repeated rows skipped, in {seconds:.1f} s "
                          f"({done / seconds if seconds > 0 else 0:,.0f} clips/s)\n")
        self.stream.flush()
