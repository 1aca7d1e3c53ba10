"""Asyncio workers: persister (group commit), activation (grace deadlines), settlement."""
