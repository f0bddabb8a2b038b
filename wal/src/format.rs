//! Encoding and decoding of the byte layout drawn in the crate docs.

use crate::{
    FORMAT_VERSION, FORMAT_VERSION_OLDEST, FRAME_ALIGN_BYTES, FRAME_HEADER_BYTES, Lsn, PAGE_BYTES,
    SEGMENT_DATA_OFFSET, SNAPSHOT_BODY_MAX_BYTES,
};

pub(crate) const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"SURGEWAL");
pub(crate) const SNAPSHOT_MAGIC: u64 = u64::from_le_bytes(*b"SURGSNAP");
pub(crate) const SEGMENT_HEADER_BYTES: usize = 44;
pub(crate) const WATERMARK_SLOT_BYTES: usize = 16;
pub(crate) const WATERMARK_SLOT_OFFSETS: [u64; 2] = [PAGE_BYTES, 2 * PAGE_BYTES];
pub(crate) const SNAPSHOT_HEADER_BYTES: usize = 40;

const _: () = assert!(WATERMARK_SLOT_OFFSETS[1] + PAGE_BYTES == SEGMENT_DATA_OFFSET);
const _: () = assert!((SEGMENT_HEADER_BYTES as u64) < PAGE_BYTES);

const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".seg";
const SNAPSHOT_PREFIX: &str = "snap-";
const SNAPSHOT_SUFFIX: &str = ".snap";
pub(crate) const TMP_SUFFIX: &str = ".tmp";

pub(crate) fn segment_name(first_lsn: Lsn) -> String {
    format!("{SEGMENT_PREFIX}{first_lsn:020}{SEGMENT_SUFFIX}")
}

pub(crate) fn snapshot_name(lsn: Lsn) -> String {
    format!("{SNAPSHOT_PREFIX}{lsn:020}{SNAPSHOT_SUFFIX}")
}

fn parse_lsn_name(name: &str, prefix: &str, suffix: &str) -> Option<Lsn> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    parse_lsn_name(name, SEGMENT_PREFIX, SEGMENT_SUFFIX)
}

pub(crate) fn parse_snapshot_name(name: &str) -> Option<Lsn> {
    parse_lsn_name(name, SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX)
}

pub(crate) fn is_snapshot_tmp_name(name: &str) -> bool {
    name.strip_suffix(TMP_SUFFIX)
        .and_then(parse_snapshot_name)
        .is_some()
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

pub(crate) const fn align_up(n: u64) -> u64 {
    n.div_ceil(FRAME_ALIGN_BYTES) * FRAME_ALIGN_BYTES
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// Format version the segment was written with (from 2 on, its data dir
    /// keeps a MANIFEST).
    pub version: u32,
    pub segment_bytes: u64,
    pub first_lsn: Lsn,
    pub prev_lsn: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeaderCheck {
    Valid(SegmentHeader),
    /// All zero (or the file is too short): creation never completed.
    Blank,
    Bad(String),
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(PAGE_BYTES as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        b[32..40].copy_from_slice(&self.prev_lsn.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes the header of a whole segment image.
    pub fn check(segment: &[u8]) -> HeaderCheck {
        if (segment.len() as u64) < SEGMENT_DATA_OFFSET {
            return if segment.iter().all(|&b| b == 0) {
                HeaderCheck::Blank
            } else {
                HeaderCheck::Bad(format!("segment is only {} bytes long", segment.len()))
            };
        }
        let b = &segment[..SEGMENT_HEADER_BYTES];
        if b.iter().all(|&x| x == 0) {
            return HeaderCheck::Blank;
        }
        if u64_at(b, 0) != SEGMENT_MAGIC {
            return HeaderCheck::Bad("bad segment magic".into());
        }
        if crc32c::crc32c(&b[0..40]) != u32_at(b, 40) {
            return HeaderCheck::Bad("segment header checksum mismatch".into());
        }
        let version = u32_at(b, 8);
        if !(FORMAT_VERSION_OLDEST..=FORMAT_VERSION).contains(&version) {
            return HeaderCheck::Bad(format!("unsupported format version {version}"));
        }
        if u64::from(u32_at(b, 12)) != PAGE_BYTES {
            return HeaderCheck::Bad("unexpected page size".into());
        }
        let header = SegmentHeader {
            version,
            segment_bytes: u64_at(b, 16),
            first_lsn: u64_at(b, 24),
            prev_lsn: u64_at(b, 32),
        };
        if header.segment_bytes != segment.len() as u64 {
            return HeaderCheck::Bad(format!(
                "header says {} bytes, file has {}",
                header.segment_bytes,
                segment.len()
            ));
        }
        if header.prev_lsn >= header.first_lsn {
            return HeaderCheck::Bad("header prev lsn is not below its first lsn".into());
        }
        HeaderCheck::Valid(header)
    }
}

fn watermark_crc(slot: usize, first_lsn: Lsn, lsn: Lsn) -> u32 {
    let mut b = [0u8; 20];
    b[0..8].copy_from_slice(&lsn.to_le_bytes());
    b[8..12].copy_from_slice(&(slot as u32).to_le_bytes());
    b[12..20].copy_from_slice(&first_lsn.to_le_bytes());
    crc32c::crc32c(&b)
}

pub(crate) fn encode_watermark(
    slot: usize,
    first_lsn: Lsn,
    lsn: Lsn,
) -> [u8; WATERMARK_SLOT_BYTES] {
    let mut b = [0u8; WATERMARK_SLOT_BYTES];
    b[0..8].copy_from_slice(&lsn.to_le_bytes());
    b[8..12].copy_from_slice(&watermark_crc(slot, first_lsn, lsn).to_le_bytes());
    b
}

/// The highest valid watermark slot of a segment (0 when none is valid).
pub(crate) fn read_watermark(segment: &[u8], first_lsn: Lsn) -> Lsn {
    let mut best = 0;
    for (slot, &at) in WATERMARK_SLOT_OFFSETS.iter().enumerate() {
        let at = at as usize;
        let Some(b) = segment.get(at..at + WATERMARK_SLOT_BYTES) else {
            continue;
        };
        let lsn = u64_at(b, 0);
        if u32_at(b, 8) == watermark_crc(slot, first_lsn, lsn) {
            best = best.max(lsn);
        }
    }
    best
}

pub(crate) fn frame_crc(frame_len: u32, lsn: Lsn, payload: &[u8]) -> u32 {
    let mut h = [0u8; 12];
    h[0..4].copy_from_slice(&frame_len.to_le_bytes());
    h[4..12].copy_from_slice(&lsn.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&h), payload)
}

pub(crate) fn encode_frame_header(lsn: Lsn, payload: &[u8]) -> [u8; FRAME_HEADER_BYTES as usize] {
    let frame_len = u32::try_from(FRAME_HEADER_BYTES as usize + payload.len())
        .expect("payload length is limited far below u32::MAX");
    let mut h = [0u8; FRAME_HEADER_BYTES as usize];
    h[0..4].copy_from_slice(&frame_len.to_le_bytes());
    h[4..8].copy_from_slice(&frame_crc(frame_len, lsn, payload).to_le_bytes());
    h[8..16].copy_from_slice(&lsn.to_le_bytes());
    h
}

/// The LSN of a padding frame: real records have LSNs above 0.
pub(crate) const PADDING_LSN: Lsn = 0;

/// A padding frame of `len` bytes (header included; 24 <= len <= 2 pages).
/// Commits end with one so that the next append starts on a fresh page and
/// never rewrites a page holding acknowledged records. Its payload starts with
/// the durable watermark as the commit began (the *commit mark*, see the crate
/// docs); 0 claims nothing.
pub(crate) fn encode_padding(len: u64, watermark: Lsn) -> Vec<u8> {
    let mut frame = Vec::with_capacity(len as usize);
    append_padding(&mut frame, len, watermark);
    frame
}

/// [`encode_padding`] written in place at the end of `out` (the WAL's staged
/// bytes), without a frame of its own to build and copy: a commit mark is up to
/// two pages, and there is one per commit.
pub(crate) fn append_padding(out: &mut Vec<u8>, len: u64, watermark: Lsn) {
    assert!(
        (PADDING_BYTES_MIN..=2 * PAGE_BYTES).contains(&len)
            && len.is_multiple_of(FRAME_ALIGN_BYTES)
    );
    let start = out.len();
    out.resize(start + len as usize, 0);
    let (header, payload) = out[start..].split_at_mut(FRAME_HEADER_BYTES as usize);
    payload[..8].copy_from_slice(&watermark.to_le_bytes());
    header.copy_from_slice(&encode_frame_header(PADDING_LSN, payload));
}

/// The smallest padding frame: a header and the watermark.
pub(crate) const PADDING_BYTES_MIN: u64 = FRAME_HEADER_BYTES + 8;

/// The watermark a padding frame's payload claims (0 for padding written before
/// commit marks, whose payload is zero).
fn padding_watermark(payload: &[u8]) -> Lsn {
    payload.get(..8).map_or(0, |b| u64_at(b, 0))
}

/// The highest watermark claimed by a commit mark that lies past `from`, where
/// a scan stopped on a frame that does not hold. Commits start on fresh pages,
/// so frames written after the damage are found again at page boundaries; a
/// mark there that claims an LSN the log before the damage does not reach
/// proves the damage is rot, not a torn tail.
pub(crate) fn claims_after(segment: &[u8], from: u64, payload_max: usize) -> Lsn {
    let len = segment.len() as u64;
    let mut claimed = 0;
    let mut page = (from + 1).next_multiple_of(PAGE_BYTES);
    while page + FRAME_HEADER_BYTES <= len {
        let mut at = page;
        // Walk the frames that hold from this page boundary on.
        while let Some((frame_len, lsn, payload)) = frame_at(segment, at, payload_max) {
            if lsn == PADDING_LSN {
                claimed = claimed.max(padding_watermark(payload));
            }
            at += align_up(u64::from(frame_len));
        }
        page = (at + 1).next_multiple_of(PAGE_BYTES);
    }
    claimed
}

/// The frame at `at` if it holds (length in bounds, checksum): its length, LSN
/// and payload.
fn frame_at(segment: &[u8], at: u64, payload_max: usize) -> Option<(u32, Lsn, &[u8])> {
    let len = segment.len() as u64;
    if at + FRAME_HEADER_BYTES > len {
        return None;
    }
    let h = &segment[at as usize..(at + FRAME_HEADER_BYTES) as usize];
    let frame_len = u32_at(h, 0);
    let crc = u32_at(h, 4);
    let lsn = u64_at(h, 8);
    let payload_len = u64::from(frame_len).checked_sub(FRAME_HEADER_BYTES)?;
    if payload_len > payload_max as u64 || at + u64::from(frame_len) > len {
        return None;
    }
    let payload =
        &segment[(at + FRAME_HEADER_BYTES) as usize..(at + u64::from(frame_len)) as usize];
    (frame_crc(frame_len, lsn, payload) == crc).then_some((frame_len, lsn, payload))
}

/// Why a frame scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// An all-zero frame header: never written.
    Zero,
    /// No room left for another frame header.
    Full,
    /// A frame that does not hold (torn or rotten).
    Invalid(String),
    /// The visitor asked to stop.
    Visitor,
}

#[derive(Clone, Debug)]
pub(crate) struct ScanEnd {
    /// Offset just past the last valid frame (including its padding).
    pub end: u64,
    pub first_lsn: Option<Lsn>,
    pub last_lsn: Lsn,
    pub records: u64,
    pub stop: ScanStop,
    /// The highest watermark the commit marks on the way claimed.
    pub claimed: Lsn,
}

/// What [`scan_frames`] checks of each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameChecks {
    /// Length, bounds, strictly increasing LSN, and the checksum.
    Full,
    /// All but the checksum: for frames whose checksum this process already checked
    /// (at open) or that it wrote itself.
    Structure,
}

/// Walks the frames of a segment image from the data offset, checking every
/// one (length, bounds, strictly increasing LSN above `prev_lsn`, and the
/// checksum unless `checks` says it was checked already).
/// `visit` returns false to stop early.
pub(crate) fn scan_frames(
    segment: &[u8],
    prev_lsn: Lsn,
    payload_max: usize,
    checks: FrameChecks,
    mut visit: impl FnMut(Lsn, &[u8]) -> bool,
) -> ScanEnd {
    let len = segment.len() as u64;
    let mut at = SEGMENT_DATA_OFFSET;
    let mut out = ScanEnd {
        end: at,
        first_lsn: None,
        last_lsn: prev_lsn,
        records: 0,
        stop: ScanStop::Full,
        claimed: 0,
    };
    loop {
        out.end = at;
        if at + FRAME_HEADER_BYTES > len {
            out.stop = ScanStop::Full;
            return out;
        }
        let h = &segment[at as usize..(at + FRAME_HEADER_BYTES) as usize];
        if h.iter().all(|&b| b == 0) {
            out.stop = ScanStop::Zero;
            return out;
        }
        let frame_start = at;
        let frame_len = u32_at(h, 0);
        let crc = u32_at(h, 4);
        let lsn = u64_at(h, 8);
        let invalid = |detail: String| ScanStop::Invalid(detail);
        if u64::from(frame_len) < FRAME_HEADER_BYTES {
            out.stop = invalid(format!("frame length {frame_len} is below the header size"));
            return out;
        }
        let payload_len = u64::from(frame_len) - FRAME_HEADER_BYTES;
        if payload_len > payload_max as u64 {
            out.stop = invalid(format!(
                "frame payload length {payload_len} exceeds {payload_max}"
            ));
            return out;
        }
        if at + u64::from(frame_len) > len {
            out.stop = invalid(format!(
                "frame length {frame_len} runs past the segment end"
            ));
            return out;
        }
        let payload =
            &segment[(at + FRAME_HEADER_BYTES) as usize..(at + u64::from(frame_len)) as usize];
        if checks == FrameChecks::Full && frame_crc(frame_len, lsn, payload) != crc {
            out.stop = invalid("frame checksum mismatch".into());
            return out;
        }
        at += align_up(u64::from(frame_len));
        if lsn == PADDING_LSN {
            // Commit padding: must end exactly on a page boundary (or the segment end).
            if !at.is_multiple_of(PAGE_BYTES) && at != len {
                out.end = frame_start;
                out.stop = invalid(format!("padding frame ends off a page boundary at {at}"));
                return out;
            }
            out.claimed = out.claimed.max(padding_watermark(payload));
            continue;
        }
        if lsn <= out.last_lsn {
            out.end = frame_start;
            out.stop = invalid(format!(
                "frame lsn {lsn} is not above the previous lsn {}",
                out.last_lsn
            ));
            return out;
        }
        out.first_lsn.get_or_insert(lsn);
        out.last_lsn = lsn;
        out.records += 1;
        if !visit(lsn, payload) {
            out.end = at;
            out.stop = ScanStop::Visitor;
            return out;
        }
    }
}

/// Offset just past the last non-zero byte at or after `from` (or `from`).
///
/// A prepared segment is mostly zeros after its tail, so the zeros are skipped a
/// block at a time (an OR over 64 bytes compiles to vector instructions; a byte
/// at a time, this was 5 % of a replay's time).
pub(crate) fn nonzero_end(segment: &[u8], from: u64) -> u64 {
    const BLOCK: usize = 64;
    let from = (from as usize).min(segment.len());
    let tail = &segment[from..];
    let mut end = tail.len();
    while end >= BLOCK && tail[end - BLOCK..end].iter().fold(0, |acc, &b| acc | b) == 0 {
        end -= BLOCK;
    }
    match tail[..end].iter().rposition(|&b| b != 0) {
        Some(i) => (from + i + 1) as u64,
        None => from as u64,
    }
}

/// A snapshot file's header, for a body of `body_len` bytes whose checksum is
/// `body_crc`: the file is this, then the body.
pub(crate) fn snapshot_header(
    lsn: Lsn,
    body_len: u64,
    body_crc: u32,
) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut header = [0; SNAPSHOT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SNAPSHOT_MAGIC.to_le_bytes());
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&body_crc.to_le_bytes());
    header[16..24].copy_from_slice(&lsn.to_le_bytes());
    header[24..32].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..32]);
    header[32..36].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The format version field of a snapshot image (meaningful once
/// [`decode_snapshot`] accepted it).
pub(crate) fn snapshot_version(file: &[u8]) -> u32 {
    file.get(8..12).map_or(0, |b| u32_at(b, 0))
}

/// Checks a snapshot file image; returns its lsn and body.
pub(crate) fn decode_snapshot(file: &[u8]) -> Result<(Lsn, &[u8]), String> {
    if file.len() < SNAPSHOT_HEADER_BYTES {
        return Err(format!(
            "file is {} bytes, shorter than the header",
            file.len()
        ));
    }
    if u64_at(file, 0) != SNAPSHOT_MAGIC {
        return Err("bad snapshot magic".into());
    }
    if crc32c::crc32c(&file[0..32]) != u32_at(file, 32) || u32_at(file, 36) != 0 {
        return Err("snapshot header checksum mismatch".into());
    }
    let version = snapshot_version(file);
    if !(FORMAT_VERSION_OLDEST..=FORMAT_VERSION).contains(&version) {
        return Err(format!("unsupported format version {version}"));
    }
    let lsn = u64_at(file, 16);
    let body_len = u64_at(file, 24);
    if body_len > SNAPSHOT_BODY_MAX_BYTES || body_len != (file.len() - SNAPSHOT_HEADER_BYTES) as u64
    {
        return Err(format!(
            "header says {body_len} body bytes, file holds {}",
            file.len() - SNAPSHOT_HEADER_BYTES
        ));
    }
    let body = &file[SNAPSHOT_HEADER_BYTES..];
    if crc32c::crc32c(body) != u32_at(file, 12) {
        return Err("snapshot body checksum mismatch".into());
    }
    Ok((lsn, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit mark written in place after other staged bytes is the frame built
    /// on its own: header (length, CRC, LSN 0), then the watermark, then zeros.
    #[test]
    fn a_commit_mark_appended_in_place_is_the_padding_frame() {
        for len in [PADDING_BYTES_MIN, 64, PAGE_BYTES, 2 * PAGE_BYTES] {
            let watermark: Lsn = 0x0102_0304_0506_0708;
            let mut payload = vec![0u8; (len - FRAME_HEADER_BYTES) as usize];
            payload[..8].copy_from_slice(&watermark.to_le_bytes());
            let mut expected = b"staged".to_vec();
            expected.extend_from_slice(&encode_frame_header(PADDING_LSN, &payload));
            expected.extend_from_slice(&payload);

            let mut staged = b"staged".to_vec();
            append_padding(&mut staged, len, watermark);
            assert_eq!(staged, expected, "len {len}");
            assert_eq!(
                padding_watermark(&staged[6 + FRAME_HEADER_BYTES as usize..]),
                watermark
            );
        }
    }

    /// The block-wise skip of zeros finds what a byte-at-a-time search finds, for
    /// every length around the block size, every position of the last non-zero
    /// byte, and starts around the block edges.
    #[test]
    fn nonzero_end_is_just_past_the_last_nonzero_byte_from_the_start() {
        let byte_wise = |segment: &[u8], from: usize| {
            let from = from.min(segment.len());
            segment[from..]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(from, |i| from + i + 1) as u64
        };
        for len in [0, 1, 63, 64, 65, 127, 128, 129, 300] {
            for last in std::iter::once(None).chain((0..len).map(Some)) {
                let mut segment = vec![0u8; len];
                for (i, b) in segment.iter_mut().enumerate() {
                    if last.is_some_and(|last| i <= last) {
                        *b = (i % 3) as u8; // zeros among the non-zeros too
                    }
                }
                if let Some(last) = last {
                    segment[last] = 0x80;
                }
                for from in [0, 1, 63, 64, 65, len / 2, len, len + 5] {
                    assert_eq!(
                        nonzero_end(&segment, from as u64),
                        byte_wise(&segment, from),
                        "len {len}, last non-zero {last:?}, from {from}"
                    );
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(1), "wal-00000000000000000001.seg");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_snapshot_name(&snapshot_name(42)), Some(42));
        assert!(is_snapshot_tmp_name("snap-00000000000000000042.snap.tmp"));
        assert_eq!(parse_segment_name("wal-1.seg"), None);
        assert_eq!(parse_segment_name("snap-00000000000000000042.snap"), None);
    }

    #[test]
    fn snapshot_round_trip_and_damage() {
        let mut file = snapshot_header(7, 5, crc32c::crc32c(b"state")).to_vec();
        file.extend_from_slice(b"state");
        assert_eq!(decode_snapshot(&file), Ok((7, &b"state"[..])));
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x10;
            assert!(decode_snapshot(&bad).is_err(), "flip at {i} not detected");
        }
        assert!(decode_snapshot(&file[..file.len() - 1]).is_err());
    }
}
