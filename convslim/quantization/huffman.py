"""Canonical Huffman coding of integer symbols (the last stage of Deep Compression).

Shared-weight indices are far from uniform (the clusters near zero hold most weights), so a
variable-length code beats fixed-width indices. Only the code length of each symbol is stored;
the codes themselves are rebuilt canonically (sorted by length, then symbol), as in DEFLATE.
"""
import heapq
import itertools

import numpy as np

from ..errors import ConvslimError

CHUNK = 1 << 20


def code_lengths(counts):
    """Huffman code length per symbol (0 for symbols that never occur)."""
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), dtype=np.int64)
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    tie = itertools.count()
    heap = [(int(counts[s]), next(tie), [int(s)]) for s in used]
    heapq.heapify(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, next(tie), s1 + s2))
    return lengths


def canonical_codes(lengths):
    """Code value per symbol, assigned in order of (length, symbol)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s] = code
        prev = int(lengths[s])
        code += 1
    return codes


def encode(symbols, lengths):
    """Pack symbols into bytes with the canonical code of `lengths`; returns (bytes, number of bits)."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(symbols) and (symbols.min() < 0 or symbols.max() >= len(lengths) or (lengths[symbols] == 0).any()):
        raise ConvslimError("a symbol has no Huffman code")
    codes = canonical_codes(lengths)
    maxlen = int(lengths.max()) if len(lengths) else 0
    shifts = np.arange(maxlen - 1, -1, -1)
    streams = []
    for start in range(0, len(symbols), CHUNK):           # bounded memory on large layers
        sym = symbols[start:start + CHUNK]
        n = lengths[sym]
        # bit j (most significant first) of every symbol's code, laid out symbol after symbol
        bits = ((codes[sym][:, None] << (maxlen - n)[:, None]) >> shifts[None, :]) & 1
        streams.append(bits[np.arange(maxlen)[None, :] < n[:, None]].astype(np.uint8))
    stream = np.concatenate(streams) if streams else np.zeros(0, dtype=np.uint8)
    return np.packbits(stream).tobytes(), int(stream.size)


def decode(data, nbits, count, lengths):
    """Inverse of `encode`: `count` symbols from the first `nbits` bits of `data`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:nbits]
    maxlen = int(lengths.max()) if count else 0
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    codes = canonical_codes(lengths)
    if maxlen <= 20:
        # table lookup: every maxlen-bit window starting at a symbol boundary names the symbol
        table_sym = np.zeros(1 << maxlen, dtype=np.int64)
        table_len = np.zeros(1 << maxlen, dtype=np.int64)
        for s in np.flatnonzero(lengths):
            lo = int(codes[s]) << (maxlen - int(lengths[s]))
            hi = lo + (1 << (maxlen - int(lengths[s])))
            table_sym[lo:hi], table_len[lo:hi] = s, lengths[s]
        padded = np.concatenate([bits, np.zeros(maxlen, dtype=np.uint8)]).astype(np.int64)
        out, pos = [], 0
        for start in range(0, nbits, CHUNK):
            stop = min(start + CHUNK, nbits)
            window = np.zeros(stop - start, dtype=np.int64)
            for j in range(maxlen):
                window = (window << 1) | padded[start + j:stop + j]
            sym, ln = table_sym[window].tolist(), table_len[window].tolist()
            while pos < stop and len(out) < count:
                out.append(sym[pos - start])
                pos += ln[pos - start]
        if pos != nbits or len(out) != count:
            raise ConvslimError("Huffman stream is corrupt (bit count does not match)")
        return np.asarray(out, dtype=np.int64)
    # long codes: walk bit by bit with the canonical first-code-per-length tables
    by_len = {}
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        by_len.setdefault(int(lengths[s]), {})[int(codes[s])] = int(s)
    out, code, length = [], 0, 0
    for b in bits.tolist():
        code, length = (code << 1) | b, length + 1
        hit = by_len.get(length, {}).get(code)
        if hit is not None:
            out.append(hit)
            code, length = 0, 0
            if len(out) == count:
                break
    if len(out) != count:
        raise ConvslimError("Huffman stream is corrupt (ran out of bits)")
    return np.asarray(out, dtype=np.int64)
