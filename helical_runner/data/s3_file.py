"""A read-only file object over one S3 object, read by ranged GETs through a read-ahead block cache.

`h5py.File` accepts a Python file object (HDF5's "fileobj" driver calls its readinto/seek/tell), so an
.h5ad on S3/MinIO is read in place: no local copy, no scratch space, and the first chunk is ready long
before a download of the whole file would be. HDF5 reads a file in many small pieces (superblock,
object headers, B-tree nodes) and in long runs (the chunks of a dataset slice): the small ones are served
from cached blocks of `block_size` bytes, and a read that continues a run (the block before it is cached)
fetches ahead, twice as far at each miss of that run up to `max_readahead`, so a run costs a few large
GETs. Runs are told apart by where they continue, so a CSR chunk's `data` and `indices` slices, read in
turn from two places in the file, each keep their read-ahead. The cache keeps at most `cache_bytes`
(least recently used blocks go first), so memory does not grow with the file.

Each GET names the ETag seen when the file was opened (`If-Match`): an object replaced mid-read fails
with one clear line instead of mixing two versions. Each GET, body included, runs through
`storage.with_retries`, so a connection dropped halfway through a response is retried like every other
S3 call.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict

from helical_runner.data import storage
from helical_runner.errors import InputError
from helical_runner.data.storage import Location, ObjectInfo

log = logging.getLogger(__name__)

MIB = 1 << 20


class S3File(io.RawIOBase):
    """Seekable, read-only bytes of `s3://bucket/key` (see the module docstring). Counters `requests` and
    `bytes_fetched` say what it cost. Raises InputError when the object changes while it is read, and
    UnavailableError (from storage.with_retries) when S3 stays unreachable."""

    def __init__(self, loc: Location, info: ObjectInfo | None = None, block_size: int = 4 * MIB,
                 cache_bytes: int = 96 * MIB, max_readahead: int = 32 * MIB):
        super().__init__()
        if not loc.is_s3:
            raise ValueError(f"{loc} is not an s3:// URL")
        info = info or storage.stat(loc)
        self.loc, self.size, self.etag = loc, info.size, info.etag
        self.block_size, self.max_blocks = block_size, max(2, cache_bytes // block_size)
        self.max_readahead_blocks = max(1, max_readahead // block_size)
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._pos = 0
        self._runs: OrderedDict[int, int] = OrderedDict()  # block a run continues at -> its read-ahead (blocks)
        self.requests = 0
        self.bytes_fetched = 0

    # --- io.RawIOBase ------------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        start = self._pos
        n = max(0, min(len(view), self.size - start))
        if n == 0:
            return 0
        first, last = start // self.block_size, (start + n - 1) // self.block_size
        self._fetch_missing(first, last)
        done = 0
        for index in range(first, last + 1):
            block = self._blocks[index]
            self._blocks.move_to_end(index)
            offset = start + done - index * self.block_size
            take = min(len(block) - offset, n - done)
            view[done:done + take] = block[offset:offset + take]
            done += take
        while len(self._blocks) > self.max_blocks:  # after the copy: a read larger than the cache still works
            self._blocks.popitem(last=False)
        self._pos = start + n
        return n

    def close(self) -> None:
        self._blocks.clear()
        super().close()

    # --- fetching ----------------------------------------------------------------------------------

    def _fetch_missing(self, first: int, last: int) -> None:
        """One GET from the first missing block of [first, last] to past `last` by the run's read-ahead."""
        missing = [i for i in range(first, last + 1) if i not in self._blocks]
        if not missing:
            return
        previous = self._runs.pop(missing[0], 1 if missing[0] - 1 in self._blocks else None)
        ahead = 0 if previous is None else min(previous * 2, self.max_readahead_blocks)  # random reads: none
        final_block = (self.size - 1) // self.block_size
        stop = min(final_block, last + ahead)
        while stop > last and stop in self._blocks:  # don't fetch again what read-ahead already holds
            stop -= 1
        lo = missing[0] * self.block_size
        hi = min(self.size, (stop + 1) * self.block_size)  # exclusive
        data = self._get(lo, hi)
        for index in range(missing[0], stop + 1):
            offset = index * self.block_size - lo
            self._blocks[index] = data[offset:offset + self.block_size]
            self._blocks.move_to_end(index)
        self._runs[stop + 1] = max(ahead, 1)
        while len(self._runs) > 64:
            self._runs.popitem(last=False)

    def _get(self, lo: int, hi: int) -> bytes:
        """Bytes [lo, hi) of the object as it was at open, retried (body included) on transient failures."""
        loc = self.loc

        def fetch() -> bytes:
            self.requests += 1
            response = storage.s3_client().get_object(Bucket=loc.bucket, Key=loc.key, Range=f"bytes={lo}-{hi - 1}",
                                                      IfMatch=f'"{self.etag}"')
            body = response["Body"].read()  # a connection dropped here raises, and with_retries tries again
            if len(body) != hi - lo:
                raise ConnectionError(f"short read: {len(body)} of {hi - lo} bytes")
            return body

        try:
            data = storage.with_retries(f"reading {loc} (bytes {lo}-{hi - 1})", fetch)
        except Exception as exc:
            if storage.is_precondition_failed(exc):
                raise InputError(f"{loc} changed while it was being read (its ETag is no longer {self.etag}); "
                                 "run the step again") from None
            if storage.is_not_found(exc):
                raise InputError(f"input {loc} was deleted while it was being read") from None
            raise
        self.bytes_fetched += len(data)
        return data

