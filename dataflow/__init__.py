"""dataflow: an asyncio re-implementation of the Seldon Core 2 Kafka data-flow engine."""

__version__ = "0.1.0"
