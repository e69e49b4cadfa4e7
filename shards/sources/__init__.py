"""Source adapters: each reads one published dataset layout and lists its samples per split.

`ADAPTERS[name].scan(root, splits, options) -> SourceListing` checks the whole layout first and
raises `LayoutError` (one line: the file and what is expected) before any media work.
"""
from shards.sources import diving48, folder, imagenet100, ssv2, ucf101
from shards.sources._layout import AdapterOptions

ADAPTERS = {
    "ucf101": ucf101,
    "ssv2": ssv2,
    "imagenet100": imagenet100,
    "diving48": diving48,
    "folder": folder,
}

__all__ = ["ADAPTERS", "AdapterOptions"]
