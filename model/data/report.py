"""The data report: what a loader leaves out or flags, logged and kept so that a run folder records it.

Whatever a loader leaves out or flags (an undecodable or oversized file, a stray entry, an empty or
unreadable class folder, a class with a single image) is logged through the loader's module logger and
recorded as a `ReportEntry` in `DataSource.report`, so that a run folder keeps it (`write_report`) even
when nobody reads the log.
"""
import dataclasses
import logging

import numpy as np

from model.atomic import write_csv

REPORT_COLUMNS = ("item", "split", "problem", "detail")


# Log messages list this many items of a report at most; the report itself keeps them all.
_LOGGED_ITEMS = 20


logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ReportEntry:
    """One item a loader left out or flagged.

    Attributes:
        item: the file or folder path, or the class name (problems of a whole class).
        split: the split it belongs to ("train", "test", ...), or "" when it belongs to none.
        problem: a short fixed category, e.g. "undecodable", "too large", "not an image file",
            "stray entry", "unreadable", "empty class", "single-image class".
        detail: what exactly, e.g. the decoder's message.
    """

    item: str
    split: str
    problem: str
    detail: str = ""


def record(report, entries, message, log):
    """Add `entries` (ReportEntry list) to `report` (a list, or None) and log `message` with their items.

    One warning through `log` (the calling module's logger) for all entries, listing the first
    _LOGGED_ITEMS as "item: detail" lines; nothing when `entries` is empty.
    """
    if not entries:
        return
    if report is not None:
        report.extend(entries)
    lines = [f"  {entry.item}" + (f": {entry.detail}" if entry.detail else "") for entry in entries[:_LOGGED_ITEMS]]
    if len(entries) > _LOGGED_ITEMS:
        lines.append(f"  ... and {len(entries) - _LOGGED_ITEMS} more (all are in the data report)")
    log.warning("%s:\n%s", message, "\n".join(lines), stacklevel=2)  # the record names the caller


def write_report(entries, path):
    """Write report entries as a CSV file (header item,split,problem,detail), atomically.

    The file is written beside `path` and renamed onto it, so a reader never sees half a report;
    an empty report still gets its header (the record that nothing was left out).

    Args:
        entries: iterable of ReportEntry (e.g. `DataSource.report`).
        path: the CSV file to write, e.g. RUN/data_report.csv.
    """
    write_csv(path, REPORT_COLUMNS, (dataclasses.astuple(entry) for entry in entries))


def report_small_classes(split, split_name, class_names, where, report=None):
    """Report the classes of `split` with a single example: they cannot form positive pairs.

    `split.labels` index `class_names`; negative labels (unknown place) are not classes.
    """
    classes = np.flatnonzero(split.labels >= 0)  # [M] examples that belong to a class
    labels, first, counts = np.unique(split.labels[classes], return_index=True, return_counts=True)
    entries = [ReportEntry(class_names[label], split_name, "single-image class",
                           f"its only image: {split.names[classes[index]]}")
               for label, index in zip(labels[counts == 1], first[counts == 1], strict=True)]
    record(report, entries, f"{len(entries)} classes of the {split_name} split in {where} have a single image "
                            "and cannot form positive pairs", logger)

