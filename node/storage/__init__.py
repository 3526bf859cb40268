"""The WAL-plus-ACID local store of one node (see docs/storage.md)."""

from node.storage.store import StoreConfig, WalStore

__all__ = ["StoreConfig", "WalStore"]
