#!/usr/bin/env python3
"""How much of a data dir's WAL is records and how much commit-mark padding.

    python3 benches/wal_padding.py DATA_DIR

Reads every `wal-*.seg` with the frame layout of `wal/src/format.rs` (from the first
data page: u32 frame length, u32 CRC, u64 LSN, payload, 8-byte aligned; LSN 0 is a
padding frame, the commit mark) up to the first zero length, and prints the record
and padding counts and bytes. Run it on a stopped server's dir (BENCHMARKS.md, "The log was
mostly padding").
"""
import glob
import os
import struct
import sys

PAGE_BYTES = 4096
SEGMENT_DATA_OFFSET = 3 * PAGE_BYTES


def main(data_dir):
    records = marks = record_bytes = padding_bytes = 0
    segments = sorted(glob.glob(os.path.join(data_dir, "wal-*.seg")))
    for path in segments:
        with open(path, "rb") as f:
            image = f.read()
        at = SEGMENT_DATA_OFFSET
        while at + 16 <= len(image):
            frame_len, _crc, lsn = struct.unpack_from("<IIQ", image, at)
            if frame_len == 0:
                break
            if lsn == 0:
                marks += 1
                padding_bytes += frame_len
            else:
                records += 1
                record_bytes += frame_len
            at += (frame_len + 7) // 8 * 8
    share = 100 * padding_bytes / max(1, padding_bytes + record_bytes)
    print(
        f"{len(segments)} segments: {records} records ({record_bytes} bytes), "
        f"{marks} commit marks ({padding_bytes} bytes): {share:.0f} % padding"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
