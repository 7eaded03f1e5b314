"""Redis backend of the LightningStore: ``open_store("redis://127.0.0.1:6379/0?prefix=agl:")``."""

from agent_lightning_redis.store import RedisLightningStore

__all__ = ["RedisLightningStore"]
