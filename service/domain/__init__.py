"""Pure domain rules: money, periods, pricing, activation, settlement.

Nothing here imports grpc, asyncpg or asyncio: plain typed functions over the frozen
dataclasses of `model`.
"""
