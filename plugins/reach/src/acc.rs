//! The window accumulator: per campaign, its impressions and the sketch of its users, encoded
//! as bytes the host stores between calls.
//!
//! Layout (little-endian), empty bytes for no campaign:
//!
//! ```text
//! header   b'R', format 1, precision 14
//! entry*   campaign u32 (strictly ascending), impressions u64, tag u8, body
//!   tag 0  exact:  n u32, n x u64 mixed user hashes, strictly ascending
//!   tag 1  sparse: k u16, k x (register index u16 strictly ascending, rank u8 in 1..=51)
//!   tag 2  dense:  16384 registers x 6 bits, packed 4 registers to 3 bytes
//! ```
//!
//! A HyperLogLog is written sparse exactly when that is smaller (fewer than 4096 registers set),
//! so the bytes are a function of the campaigns' impression counts, their user sets and the
//! exact threshold: the same events in any order or grouping of batches (or accumulators merged
//! in any order) give the same bytes.

use crate::sketch::{DENSE_BYTES, M, MAX_RANK, P, Registers, Sketch, index_rank, mix};

const HEADER: [u8; 3] = [b'R', 1, P as u8];
const TAG_EXACT: u8 = 0;
const TAG_SPARSE: u8 = 1;
const TAG_DENSE: u8 = 2;
/// campaign u32 + impressions u64 + tag u8.
const ENTRY_HEAD: usize = 13;

/// One campaign's state in a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Campaign {
    /// Impressions counted (every impression, repeated users included).
    pub impressions: u64,
    /// The distinct users who had an impression.
    pub sketch: Sketch,
}

impl Campaign {
    fn merge(&mut self, other: &Campaign, threshold: u32, id: u32) -> Result<(), String> {
        self.impressions = add_impressions(self.impressions, other.impressions, id)?;
        self.sketch.merge(&other.sketch, threshold);
        Ok(())
    }
}

fn add_impressions(a: u64, b: u64, campaign: u32) -> Result<u64, String> {
    a.checked_add(b)
        .ok_or_else(|| format!("campaign {campaign}: impression count overflows u64"))
}

/// A metric row without the WIT types (the wasm glue converts it).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Interned campaign id.
    pub campaign: u32,
    /// `reach` or `frequency`.
    pub metric: &'static str,
    /// See the crate documentation.
    pub value: f64,
    /// See the crate documentation.
    pub numerator: f64,
    /// See the crate documentation.
    pub denominator: f64,
}

/// A decoded accumulator: campaigns ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accumulator {
    /// `(campaign, state)`, ascending by campaign, each campaign once.
    pub campaigns: Vec<(u32, Campaign)>,
}

/// An entry located but not decoded: accumulate copies the entries of campaigns a batch does
/// not touch without decoding them.
struct RawEntry<'a> {
    campaign: u32,
    bytes: &'a [u8],
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Splits an accumulator into entries, checking the header, the lengths and the campaign order.
fn parse(acc: &[u8]) -> Result<Vec<RawEntry<'_>>, String> {
    if acc.is_empty() {
        return Ok(Vec::new());
    }
    if acc.len() < HEADER.len() || acc[..2] != HEADER[..2] {
        return Err("accumulator is not a reach accumulator (format 1)".into());
    }
    if acc[2] != HEADER[2] {
        return Err(format!(
            "accumulator has HyperLogLog precision {}, this build uses {P}",
            acc[2]
        ));
    }
    if acc.len() == HEADER.len() {
        return Err("accumulator has a header and no campaign (an empty one is empty)".into());
    }
    let mut entries: Vec<RawEntry> = Vec::new();
    let mut o = HEADER.len();
    while o < acc.len() {
        let short = || format!("accumulator truncated at byte {o}");
        if acc.len() - o < ENTRY_HEAD {
            return Err(short());
        }
        let campaign = u32_at(acc, o);
        let body = o + ENTRY_HEAD;
        let body_len = match acc[o + 12] {
            TAG_EXACT if acc.len() >= body + 4 => 4 + 8 * u32_at(acc, body) as usize,
            TAG_SPARSE if acc.len() >= body + 2 => 2 + 3 * u16_at(acc, body) as usize,
            TAG_DENSE => DENSE_BYTES,
            TAG_EXACT | TAG_SPARSE => return Err(short()),
            t => return Err(format!("accumulator campaign {campaign}: unknown tag {t}")),
        };
        let end = body + body_len;
        if end > acc.len() {
            return Err(short());
        }
        if entries.last().is_some_and(|e| e.campaign >= campaign) {
            return Err(format!(
                "accumulator campaigns not ascending at campaign {campaign}"
            ));
        }
        entries.push(RawEntry {
            campaign,
            bytes: &acc[o..end],
        });
        o = end;
    }
    Ok(entries)
}

/// Decodes one located entry, checking every value.
fn decode_entry(e: &RawEntry) -> Result<Campaign, String> {
    let b = e.bytes;
    let c = e.campaign;
    let impressions = u64_at(b, 4);
    let body = &b[ENTRY_HEAD..];
    let sketch = match b[12] {
        TAG_EXACT => {
            let set: Vec<u64> = body[4..].chunks_exact(8).map(|h| u64_at(h, 0)).collect();
            if set.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!(
                    "accumulator campaign {c}: exact user set not ascending"
                ));
            }
            Sketch::Exact(set)
        }
        TAG_SPARSE => {
            let mut regs = Registers::default();
            let mut last = None;
            for r in body[2..].chunks_exact(3) {
                let (i, rank) = (u16_at(r, 0) as usize, r[2]);
                if i >= M || last.is_some_and(|l| l >= i) || rank == 0 || rank > MAX_RANK {
                    return Err(format!(
                        "accumulator campaign {c}: bad sparse register {i} = {rank}"
                    ));
                }
                regs.set(i, rank);
                last = Some(i);
            }
            Sketch::Hll(regs)
        }
        _ => {
            let mut regs = Registers::default();
            for (g, chunk) in body.chunks_exact(3).enumerate() {
                let v = chunk[0] as u32 | (chunk[1] as u32) << 8 | (chunk[2] as u32) << 16;
                for j in 0..4 {
                    let rank = ((v >> (6 * j)) & 63) as u8;
                    if rank > MAX_RANK {
                        return Err(format!(
                            "accumulator campaign {c}: register {} = {rank} > {MAX_RANK}",
                            4 * g + j
                        ));
                    }
                    regs.set(4 * g + j, rank);
                }
            }
            Sketch::Hll(regs)
        }
    };
    let users_ok = match &sketch {
        Sketch::Exact(set) => !set.is_empty() && set.len() as u64 <= impressions,
        Sketch::Hll(_) => impressions > 0 && (b[12] == TAG_DENSE || body.len() > 2),
    };
    if !users_ok {
        return Err(format!(
            "accumulator campaign {c}: {impressions} impressions do not fit its users"
        ));
    }
    Ok(Campaign {
        impressions,
        sketch,
    })
}

/// Appends one campaign's entry (canonical: sparse exactly when smaller than dense).
fn encode_entry(campaign: u32, s: &Campaign, out: &mut Vec<u8>) {
    out.extend_from_slice(&campaign.to_le_bytes());
    out.extend_from_slice(&s.impressions.to_le_bytes());
    match &s.sketch {
        Sketch::Exact(set) => {
            out.push(TAG_EXACT);
            out.extend_from_slice(&(set.len() as u32).to_le_bytes());
            set.iter()
                .for_each(|h| out.extend_from_slice(&h.to_le_bytes()));
        }
        Sketch::Hll(regs) => encode_hll(regs, out),
    }
}

/// Appends tag and body of a HyperLogLog: sparse exactly when that is smaller than dense.
fn encode_hll(regs: &Registers, out: &mut Vec<u8>) {
    let k = regs.nonzero();
    if sparse_fits(k) {
        out.push(TAG_SPARSE);
        out.extend_from_slice(&(k as u16).to_le_bytes());
        for (i, &r) in regs.as_slice().iter().enumerate() {
            if r != 0 {
                out.extend_from_slice(&(i as u16).to_le_bytes());
                out.push(r);
            }
        }
    } else {
        out.push(TAG_DENSE);
        for g in regs.as_slice().chunks_exact(4) {
            let v = g[0] as u32 | (g[1] as u32) << 6 | (g[2] as u32) << 12 | (g[3] as u32) << 18;
            out.extend_from_slice(&v.to_le_bytes()[..3]);
        }
    }
}

/// True if `k` set registers take fewer bytes sparse than dense.
fn sparse_fits(k: usize) -> bool {
    2 + 3 * k < DENSE_BYTES
}

/// Bytes of one campaign's entry as [`Accumulator::encode`] writes it (without the 3-byte
/// header).
pub fn entry_bytes(c: &Campaign) -> usize {
    let mut v = Vec::new();
    encode_entry(0, c, &mut v);
    v.len()
}

impl Accumulator {
    /// Decodes and checks an accumulator; empty bytes are an empty window.
    pub fn decode(acc: &[u8]) -> Result<Self, String> {
        let campaigns = parse(acc)?
            .iter()
            .map(|e| Ok((e.campaign, decode_entry(e)?)))
            .collect::<Result<_, String>>()?;
        Ok(Accumulator { campaigns })
    }

    /// The canonical bytes (empty for no campaign).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.campaigns.is_empty() {
            out.extend_from_slice(&HEADER);
        }
        for (c, s) in &self.campaigns {
            encode_entry(*c, s, &mut out);
        }
        out
    }

    /// The union with `other`: impressions added, user sets united.
    pub fn merge(&mut self, other: &Accumulator, threshold: u32) -> Result<(), String> {
        let mut out = Vec::with_capacity(self.campaigns.len() + other.campaigns.len());
        let mut a = std::mem::take(&mut self.campaigns).into_iter().peekable();
        let mut b = other.campaigns.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (Some((ca, _)), Some((cb, _))) if ca == cb => {
                    let (c, mut s) = a.next().unwrap();
                    s.merge(&b.next().unwrap().1, threshold, c)?;
                    out.push((c, s));
                }
                (Some((ca, _)), Some((cb, _))) if cb < ca => out.push(b.next().unwrap().clone()),
                (Some(_), _) => out.push(a.next().unwrap()),
                (None, Some(_)) => out.push(b.next().unwrap().clone()),
                (None, None) => break,
            }
        }
        for (_, s) in &mut out {
            s.sketch.normalize(threshold);
        }
        self.campaigns = out;
        Ok(())
    }

    /// The window's rows: per campaign `reach` then `frequency` (see the crate documentation).
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::with_capacity(2 * self.campaigns.len());
        for (c, s) in &self.campaigns {
            push_rows(*c, s, &mut rows);
        }
        rows
    }
}

fn push_rows(campaign: u32, s: &Campaign, rows: &mut Vec<Row>) {
    // An estimate above the impressions is impossible as a count: capped.
    let reach = s.sketch.estimate().min(s.impressions) as f64;
    let impressions = s.impressions as f64;
    rows.push(Row {
        campaign,
        metric: "reach",
        value: reach,
        numerator: reach,
        denominator: impressions,
    });
    rows.push(Row {
        campaign,
        metric: "frequency",
        value: if reach > 0.0 {
            impressions / reach
        } else {
            0.0
        },
        numerator: impressions,
        denominator: reach,
    });
}

/// Folds a batch's impressions, `(campaign, user hash)` each, into an accumulator. Only the
/// campaigns the batch has impressions for are decoded and re-encoded; the others' bytes are
/// copied.
pub fn accumulate(
    acc: &[u8],
    impressions: impl IntoIterator<Item = (u32, u64)>,
    threshold: u32,
) -> Result<Vec<u8>, String> {
    // (campaign, mixed user hash) of every impression, sorted: runs per campaign.
    let mut seen: Vec<(u32, u64)> = impressions.into_iter().map(|(c, u)| (c, mix(u))).collect();
    let entries = parse(acc)?;
    if seen.is_empty() {
        return Ok(acc.to_vec()); // parsed (checked) above
    }
    seen.sort_unstable();

    let mut out = Vec::with_capacity(acc.len().max(HEADER.len()) + 16 * seen.len());
    out.extend_from_slice(&HEADER);
    let mut old = entries.iter().peekable();
    let mut hashes = Vec::new();
    let mut i = 0;
    while i < seen.len() {
        let c = seen[i].0;
        let run = seen[i..].iter().take_while(|(rc, _)| *rc == c).count();
        hashes.clear();
        hashes.extend(seen[i..i + run].iter().map(|&(_, h)| h));
        hashes.dedup();
        i += run;
        while let Some(e) = old.next_if(|e| e.campaign < c) {
            out.extend_from_slice(e.bytes);
        }
        let prior = old.next_if(|e| e.campaign == c);
        update_entry(prior, c, run as u64, &hashes, threshold, &mut out)?;
    }
    for e in old {
        out.extend_from_slice(e.bytes);
    }
    Ok(out)
}

/// Appends campaign `c`'s entry: `prior` (if any) plus `impressions` impressions of the users
/// `hashes` (mixed, ascending, no repeats). Works on the encoded form: an exact set is merged
/// as it is copied, a sparse sketch's register list likewise, a dense sketch is copied and its
/// registers raised in place. The result is byte for byte what decoding, inserting and
/// [`encode_entry`] give (the tests compare the two paths). Checks what it reads: the order of
/// an exact set and of sparse registers; a dense sketch's untouched registers are checked by
/// `finish` (`decode_entry`).
fn update_entry(
    prior: Option<&RawEntry>,
    c: u32,
    impressions: u64,
    hashes: &[u64],
    threshold: u32,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    const NEW: [u8; ENTRY_HEAD + 4] = [0; ENTRY_HEAD + 4]; // an empty exact set
    let b = prior.map_or(&NEW[..], |e| e.bytes);
    let old_impressions = u64_at(b, 4);
    out.extend_from_slice(&c.to_le_bytes());
    out.extend_from_slice(&add_impressions(old_impressions, impressions, c)?.to_le_bytes());
    let body = &b[ENTRY_HEAD..];
    match b[12] {
        TAG_EXACT => {
            let old_n = u32_at(body, 0) as usize;
            if prior.is_some() && (old_n == 0 || old_n as u64 > old_impressions) {
                return Err(format!(
                    "accumulator campaign {c}: {old_impressions} impressions do not fit its users"
                ));
            }
            let old = &body[4..];
            let hash = |k: usize| u64_at(old, 8 * k);
            if (1..old_n).any(|k| hash(k - 1) >= hash(k)) {
                return Err(format!(
                    "accumulator campaign {c}: exact user set not ascending"
                ));
            }
            // Copy the old set in runs, the new hashes at their places.
            let mut added = 0;
            let mut copied = 0; // old hashes copied
            let mut merged = Vec::with_capacity(old.len() + 8 * hashes.len());
            for &x in hashes {
                let at = copied + partition_point(old_n - copied, |k| hash(copied + k) < x);
                merged.extend_from_slice(&old[8 * copied..8 * at]);
                copied = at;
                if copied == old_n || hash(copied) != x {
                    merged.extend_from_slice(&x.to_le_bytes());
                    added += 1;
                }
            }
            merged.extend_from_slice(&old[8 * copied..]);
            let n = old_n + added;
            if n > threshold as usize {
                let mut regs = Registers::default();
                merged
                    .chunks_exact(8)
                    .for_each(|h| regs.insert(u64_at(h, 0)));
                encode_hll(&regs, out);
            } else {
                out.push(TAG_EXACT);
                out.extend_from_slice(&(n as u32).to_le_bytes());
                out.extend_from_slice(&merged);
            }
        }
        TAG_SPARSE => {
            let old_k = u16_at(body, 0) as usize;
            let old = &body[2..];
            let index = |k: usize| u16_at(old, 3 * k) as usize;
            for k in 0..old_k {
                let (i, rank) = (index(k), old[3 * k + 2]);
                if i >= M || (k > 0 && index(k - 1) >= i) || rank == 0 || rank > MAX_RANK {
                    return Err(format!(
                        "accumulator campaign {c}: bad sparse register {i} = {rank}"
                    ));
                }
            }
            let mut regs: Vec<(usize, u8)> = hashes.iter().map(|&h| index_rank(h)).collect();
            regs.sort_unstable();
            // The highest rank per register: the last of each run.
            regs.dedup_by(|later, earlier| {
                let same = later.0 == earlier.0;
                if same {
                    earlier.1 = later.1;
                }
                same
            });
            let mut added = 0;
            let mut copied = 0;
            let mut merged = Vec::with_capacity(old.len() + 3 * regs.len());
            for &(i, rank) in &regs {
                let at = copied + partition_point(old_k - copied, |k| index(copied + k) < i);
                merged.extend_from_slice(&old[3 * copied..3 * at]);
                copied = at;
                merged.extend_from_slice(&(i as u16).to_le_bytes());
                if copied < old_k && index(copied) == i {
                    merged.push(rank.max(old[3 * copied + 2]));
                    copied += 1;
                } else {
                    merged.push(rank);
                    added += 1;
                }
            }
            merged.extend_from_slice(&old[3 * copied..]);
            let k = old_k + added;
            if sparse_fits(k) {
                out.push(TAG_SPARSE);
                out.extend_from_slice(&(k as u16).to_le_bytes());
                out.extend_from_slice(&merged);
            } else {
                let mut regs = Registers::default();
                for r in merged.chunks_exact(3) {
                    regs.set(u16_at(r, 0) as usize, r[2]);
                }
                encode_hll(&regs, out);
            }
        }
        _ => {
            out.push(TAG_DENSE);
            let d = out.len();
            out.extend_from_slice(body);
            let dense = &mut out[d..];
            for &h in hashes {
                let (i, rank) = index_rank(h);
                let o = 3 * (i / 4);
                let shift = 6 * (i % 4);
                let v = dense[o] as u32 | (dense[o + 1] as u32) << 8 | (dense[o + 2] as u32) << 16;
                if rank as u32 > (v >> shift) & 63 {
                    let v = (v & !(63 << shift)) | (rank as u32) << shift;
                    dense[o..o + 3].copy_from_slice(&v.to_le_bytes()[..3]);
                }
            }
        }
    }
    Ok(())
}

/// The number of `k` in `0..n` with `below(k)`, for a `below` true on a prefix of `0..n`.
fn partition_point(n: usize, below: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if below(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The union of two accumulators, as bytes.
pub fn merge(a: &[u8], b: &[u8], threshold: u32) -> Result<Vec<u8>, String> {
    let mut acc = Accumulator::decode(a)?;
    acc.merge(&Accumulator::decode(b)?, threshold)?;
    Ok(acc.encode())
}

/// The rows of an accumulator.
pub fn finish(acc: &[u8]) -> Result<Vec<Row>, String> {
    // One campaign decoded at a time: memory stays the accumulator plus one sketch.
    let entries = parse(acc)?;
    let mut rows = Vec::with_capacity(2 * entries.len());
    for e in &entries {
        push_rows(e.campaign, &decode_entry(e)?, &mut rows);
    }
    Ok(rows)
}
