"""Random numbers keyed by row and draw, so that a row's attack never depends on its batch.

An attack's random draws (random starts, Square's windows and signs, NES's probes,
random targets) come from a counter-based generator: the value of element ``j`` of draw
``tag`` for original row ``r`` is a hash of ``(key, r, tag, j)``, where ``key`` comes
from the caller's ``torch.Generator``. So row ``r`` sees the same numbers whether it is
attacked alone, in a batch of 500, after ``--limit`` cut the data, or as one of the rows
an eps sweep carried forward (DESIGN.md: results per row, the worst case per row). This
is the counter-based design of Salmon et al., "Parallel Random Numbers: As Easy as
1, 2, 3" (SC 2011); the mixing function is Wellons' ``lowbias32`` (2018), with
multipliers below 2^31 so that every product fits torch's signed 64-bit integers.
Draws that all rows share (Square's L2 window per iteration) are keyed by ``key`` and
``tag`` only. Not for cryptography.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch
from torch import Tensor

MASK = 0xFFFFFFFF
_M1 = 0x21F0AAAD
_M2 = 0x735A2D97
_GOLDEN = 0x9E3779B9
Tag = int | str | tuple[int | str, ...]


def mix32(h: Tensor, masked: bool = False) -> Tensor:
    """``lowbias32`` on int64 values in ``[0, 2^32)``, in place; returns ``h``.

    ``masked``: ``h`` already lies in ``[0, 2^32)`` (the first masking is skipped).
    """
    if not masked:
        h.bitwise_and_(MASK)
    h.bitwise_xor_(h >> 16).mul_(_M1).bitwise_and_(MASK)
    h.bitwise_xor_(h >> 15).mul_(_M2).bitwise_and_(MASK)
    return h.bitwise_xor_(h >> 15)


def mix32_int(h: int) -> int:
    """:func:`mix32` of one Python integer (the same value: no product overflows 64 bits)."""
    h &= MASK
    h = ((h ^ (h >> 16)) * _M1) & MASK
    h = ((h ^ (h >> 15)) * _M2) & MASK
    return h ^ (h >> 15)


_COUNTERS: dict[int, Tensor] = {}


def _counters(count: int) -> Tensor:
    """``j * GOLDEN mod 2^32`` for ``j < count`` (cached; never modified)."""
    h = _COUNTERS.get(count)
    if h is None:
        h = torch.arange(count, dtype=torch.long).mul_(_GOLDEN).bitwise_and_(MASK)
        if count <= 4096:
            _COUNTERS[count] = h
    return h


def tag_code(tag: Tag) -> int:
    """A stable 32-bit code for a draw's tag (the same in every process)."""
    return zlib.crc32(repr(tag).encode())


class RowRandom:
    """Per-row random streams: ``random.uniform(tag, shape)`` has one row per attacked row.

    ``rows`` are the rows' ids in the caller's data (the base class passes the original
    row indices); ``random[index]`` is the streams of a subset of rows, with the same draws.
    """

    def __init__(self, key: int, rows: Tensor, device: torch.device | str = "cpu") -> None:
        self.key = int(key) & MASK
        self.rows = rows.to(torch.long).cpu()
        self.device = torch.device(device)
        seeds = self.rows.clone()
        low = mix32(seeds & MASK)
        high = mix32(seeds >> 32)
        self._row_keys = mix32(low.bitwise_xor_(high * 3).add_(self.key).bitwise_and_(MASK))

    @classmethod
    def from_generator(cls, generator: torch.Generator, rows: Tensor, device: torch.device | str = "cpu") -> RowRandom:
        """Streams whose key is one draw of ``generator`` (same seed, same streams)."""
        key = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return cls(key, rows, device)

    def __len__(self) -> int:
        return int(self.rows.numel())

    def __getitem__(self, index: Tensor | slice) -> RowRandom:
        twin = object.__new__(RowRandom)
        twin.key, twin.device = self.key, self.device
        index = index.cpu() if isinstance(index, Tensor) else index
        twin.rows, twin._row_keys = self.rows[index], self._row_keys[index]
        return twin

    def bits(self, tag: Tag, shape: Sequence[int] = (), shared: bool = False) -> Tensor:
        """Uniform 32-bit integers (int64) of shape ``(rows, *shape)``, or ``shape`` if shared."""
        count = math.prod(shape)
        code = tag_code(tag)
        if shared:
            if count <= 64:
                return torch.tensor(self.shared_bits(tag, count), dtype=torch.long).view(tuple(shape))
            base = torch.tensor([mix32_int(self.key ^ code)], dtype=torch.long)
        else:
            base = mix32(self._row_keys.bitwise_xor(code), masked=True)  # both operands lie in [0, 2^32)
        h = mix32(base.unsqueeze(1).add(_counters(count)))
        out_shape = tuple(shape) if shared else (len(self), *shape)
        return h.view(out_shape)

    def shared_bits(self, tag: Tag, count: int) -> list[int]:
        """``bits(tag, (count,), shared=True)`` as Python integers, computed without tensors."""
        base = mix32_int(self.key ^ tag_code(tag))
        return [mix32_int(base + ((j * _GOLDEN) & MASK)) for j in range(count)]

    def bits_block(self, tags: Sequence[Tag], shape: Sequence[int] = ()) -> Tensor:
        """``bits(tag, shape)`` of several tags at once: shape ``(rows, len(tags), *shape)``,
        ``out[:, t]`` equal to ``bits(tags[t], shape)``."""
        count = math.prod(shape)
        codes = torch.tensor([tag_code(tag) for tag in tags], dtype=torch.long)
        base = mix32(self._row_keys.unsqueeze(1).bitwise_xor(codes), masked=True)  # [rows, tags]
        h = mix32(base.unsqueeze(2).add(_counters(count)))
        return h.view(len(self), len(tags), *shape)

    def signs_block(self, tags: Sequence[Tag], shape: Sequence[int] = ()) -> Tensor:
        """``signs(tag, shape)`` of several tags at once, like :meth:`bits_block`."""
        bits = self.bits_block(tags, shape)
        return bits.bitwise_right_shift_(31).mul_(2).sub_(1).to(torch.float32).to(self.device)

    def uniform(self, tag: Tag, shape: Sequence[int] = (), *, shared: bool = False) -> Tensor:
        """Uniform float32 in ``[0, 1)`` (24 bits)."""
        bits = self.bits(tag, shape, shared)
        return bits.bitwise_right_shift_(8).to(torch.float32).mul_(2.0**-24).to(self.device)

    def normal(self, tag: Tag, shape: Sequence[int] = (), *, shared: bool = False) -> Tensor:
        """Standard normal float32 by the Box-Muller transform of two uniform draws."""
        u1 = self.uniform((tag, "u1") if not isinstance(tag, tuple) else (*tag, "u1"), shape, shared=shared)
        u2 = self.uniform((tag, "u2") if not isinstance(tag, tuple) else (*tag, "u2"), shape, shared=shared)
        radius = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 - u1 lies in (0, 1]
        return radius * torch.cos((2.0 * math.pi) * u2)

    def randint(self, tag: Tag, low: int, high: int, shape: Sequence[int] = (), *, shared: bool = False) -> Tensor:
        """Integers in ``[low, high)``."""
        if high <= low:
            raise ValueError(f"randint needs high > low; got [{low}, {high})")
        bits = self.bits(tag, shape, shared)
        return (bits % (high - low) + low).to(self.device)

    def signs(self, tag: Tag, shape: Sequence[int] = (), *, shared: bool = False) -> Tensor:
        """Random +1/-1 as float32."""
        bits = self.bits(tag, shape, shared)
        return bits.bitwise_right_shift_(31).mul_(2).sub_(1).to(torch.float32).to(self.device)
