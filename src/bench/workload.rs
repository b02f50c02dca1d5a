//! Workload generation: keys from indexes, value sizes, key choice
//! (uniform or zipfian) and the per-request operation mix. No I/O here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, ensure};
use bytes::Bytes;
use rand::Rng;

/// Largest value the API accepts (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Builds keys deterministically from an index: `key` followed by the index
/// zero-padded so that every key is exactly `key_size` bytes. Lexicographic
/// order equals index order, so scans walk the keyspace in order.
#[derive(Debug, Clone)]
pub struct KeyFormat {
    width: usize,
}

impl KeyFormat {
    const PREFIX: &'static str = "key";

    /// Checks that `key_size` leaves room for every index below `keys`.
    pub fn new(key_size: usize, keys: u64) -> anyhow::Result<Self> {
        ensure!(keys > 0, "--keys must be at least 1");
        ensure!(
            key_size <= 4096,
            "--key-size {key_size} exceeds the 4096-byte key limit"
        );
        let digits = (keys - 1).to_string().len();
        let min = Self::PREFIX.len() + digits;
        if key_size < min {
            bail!("--key-size {key_size} is too small for {keys} keys (need at least {min} bytes)");
        }
        Ok(Self {
            width: key_size - Self::PREFIX.len(),
        })
    }

    /// The key for index `i` (written digit by digit: `format!` padding was a tenth of the
    /// generator's CPU in an in-process profile).
    pub fn key(&self, i: u64) -> Bytes {
        let mut k = vec![b'0'; Self::PREFIX.len() + self.width];
        k[..Self::PREFIX.len()].copy_from_slice(Self::PREFIX.as_bytes());
        let mut n = i;
        for d in k[Self::PREFIX.len()..].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if n != 0 {
            // An index past the width (inserts beyond the keyspace with a minimal key size):
            // a longer key, never a wrapped one that would collide with an existing key.
            return Bytes::from(format!("{}{i}", Self::PREFIX));
        }
        Bytes::from(k)
    }
}

/// Value sizes of the scale sheet: bucket `(lo, hi_inclusive, share)`.
pub const SCALE_SHEET_BUCKETS: [(usize, usize, f64); 5] = [
    (0, 99, 0.30),
    (100, 1023, 0.40),
    (1024, 10 * 1024 - 1, 0.20),
    (10 * 1024, 100 * 1024 - 1, 0.08),
    (100 * 1024, MAX_VALUE_BYTES, 0.02),
];

/// How value sizes are drawn.
#[derive(Debug, Clone)]
pub enum ValueSizes {
    /// Every value has this size.
    Fixed(usize),
    /// Pick a bucket by share, then a size uniformly inside it.
    Buckets(Vec<(usize, usize, f64)>),
}

impl ValueSizes {
    /// The default (scale sheet) distribution.
    pub fn scale_sheet() -> Self {
        ValueSizes::Buckets(SCALE_SHEET_BUCKETS.to_vec())
    }

    /// Draws one size.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        match self {
            ValueSizes::Fixed(n) => *n,
            ValueSizes::Buckets(buckets) => {
                let mut u: f64 = rng.random();
                for &(lo, hi, share) in buckets {
                    if u < share {
                        return rng.random_range(lo..=hi);
                    }
                    u -= share;
                }
                // Rounding left a sliver past the last share.
                let (lo, hi, _) = buckets[buckets.len() - 1];
                rng.random_range(lo..=hi)
            }
        }
    }

    /// Expected size in bytes.
    pub fn mean(&self) -> f64 {
        match self {
            ValueSizes::Fixed(n) => *n as f64,
            ValueSizes::Buckets(b) => b
                .iter()
                .map(|&(lo, hi, share)| share * (lo + hi) as f64 / 2.0)
                .sum(),
        }
    }

    /// Short description for reports.
    pub fn describe(&self) -> String {
        match self {
            ValueSizes::Fixed(n) => format!("fixed {n} B"),
            ValueSizes::Buckets(_) => format!("scale-sheet buckets (mean {:.0} B)", self.mean()),
        }
    }
}

/// A shared block of random bytes that values are sliced from (zero copy).
#[derive(Debug, Clone)]
pub struct ValuePool {
    data: Bytes,
}

impl ValuePool {
    /// Fills a pool of twice the largest value from `rng`.
    pub fn new<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut data = vec![0u8; 2 * MAX_VALUE_BYTES];
        rng.fill_bytes(&mut data);
        Self {
            data: Bytes::from(data),
        }
    }

    /// A value of `len` bytes (at most [`MAX_VALUE_BYTES`]) at a random offset.
    pub fn value<R: Rng + ?Sized>(&self, rng: &mut R, len: usize) -> Bytes {
        let len = len.min(MAX_VALUE_BYTES);
        let off = rng.random_range(0..=self.data.len() - len);
        self.data.slice(off..off + len)
    }
}

/// Zipfian ranks in `[0, n)` (rank 0 most popular), after Gray et al.,
/// "Quickly generating billion-record synthetic databases" (as in YCSB).
#[derive(Debug, Clone)]
pub struct Zipfian {
    n: u64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipfian {
    /// The skew used by the bench (YCSB's default).
    pub const DEFAULT_THETA: f64 = 0.99;

    /// Precomputes the constants for `n` items (exact zeta sum for the first
    /// ten million terms, an integral approximation beyond).
    pub fn new(n: u64, theta: f64) -> Self {
        assert!(n >= 1, "zipfian needs at least one item");
        assert!(theta > 0.0 && theta < 1.0, "theta must be in (0, 1)");
        let zetan = zeta(n, theta);
        let zeta2 = zeta(2.min(n), theta);
        let eta = if n <= 1 {
            0.0
        } else {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        };
        Self {
            n,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
            half_pow_theta: 0.5f64.powf(theta),
        }
    }

    /// Probability of rank 0.
    #[cfg(test)]
    pub fn p0(&self) -> f64 {
        1.0 / self.zetan
    }

    /// Draws one rank.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 || self.n == 1 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1;
        }
        let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n - 1)
    }
}

fn zeta(n: u64, theta: f64) -> f64 {
    const EXACT: u64 = 10_000_000;
    let m = n.min(EXACT);
    let mut sum = 0.0;
    for i in 1..=m {
        sum += 1.0 / (i as f64).powf(theta);
    }
    if n > m {
        // Sum over (m, n] of x^-theta ~ integral from m+0.5 to n+0.5.
        let f = |x: f64| x.powf(1.0 - theta) / (1.0 - theta);
        sum += f(n as f64 + 0.5) - f(m as f64 + 0.5);
    }
    sum
}

/// Spreads zipfian ranks over the keyspace with a bijection, so that hot
/// keys are not neighbours (which would make block caching unrealistically
/// effective and scans start in one place).
#[derive(Debug, Clone)]
pub struct Scramble {
    n: u64,
    mult: u64,
    offset: u64,
}

impl Scramble {
    /// A permutation of `[0, n)`.
    pub fn new(n: u64) -> Self {
        let mut mult = 0x9E37_79B9_7F4A_7C15 % n.max(1);
        if mult == 0 {
            mult = 1;
        }
        while gcd(mult, n) != 1 {
            mult += 1;
        }
        Self {
            n,
            mult,
            offset: n / 3,
        }
    }

    /// Where rank `r` lands.
    pub fn map(&self, r: u64) -> u64 {
        ((u128::from(r) * u128::from(self.mult) + u128::from(self.offset)) % u128::from(self.n))
            as u64
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Key choice over `[0, n)`.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Every key equally likely.
    Uniform(u64),
    /// Zipfian ranks, scrambled over the keyspace.
    Zipfian(Zipfian, Scramble),
}

impl KeyChooser {
    /// Uniform keys over `n`.
    pub fn uniform(n: u64) -> Self {
        KeyChooser::Uniform(n)
    }

    /// Zipfian keys over `n` with `theta`.
    pub fn zipfian(n: u64, theta: f64) -> Self {
        KeyChooser::Zipfian(Zipfian::new(n, theta), Scramble::new(n))
    }

    /// Draws a key index.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            KeyChooser::Uniform(n) => rng.random_range(0..*n),
            KeyChooser::Zipfian(z, s) => s.map(z.sample(rng)),
        }
    }
}

/// Which workload the bench runs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Scale sheet mix: reads/writes, single and batched, sized values.
    Default,
    /// Put every key of the keyspace once (client c takes keys c, c+N, ...).
    Load,
    /// Single Gets (after a preload).
    Read,
    /// Scans from random start keys (after a preload).
    Scan,
    /// Single Puts of --value-size bytes (1 KiB by default).
    Put,
    /// YCSB A: 50% reads, 50% updates, zipfian keys (1 KiB records, after a preload).
    YcsbA,
    /// YCSB B: 95% reads, 5% updates, zipfian keys.
    YcsbB,
    /// YCSB C: reads only, zipfian keys.
    YcsbC,
    /// YCSB D: 95% reads, 5% inserts of new keys; reads favour the latest inserted keys.
    YcsbD,
    /// YCSB E: 95% scans (lengths uniform in 1..=--scan-length) from zipfian start keys, 5%
    /// inserts of new keys.
    YcsbE,
    /// YCSB F: 50% reads, 50% read-modify-writes (a read then a write of the same key,
    /// reported as one operation), zipfian keys.
    YcsbF,
    /// The floor of the RPC stack: an empty round trip (gRPC health Check) on the same tonic
    /// stack; nothing is read or written. Only with --target.
    Ping,
    /// The floor of the object store: one raw PUT of --value-size bytes (1 KiB) per request,
    /// straight to the store (fsynced on a local directory). Only with --embedded.
    StorePut,
    /// The floor of the object store: one ranged GET of --value-size bytes from an object of
    /// 1 MiB per request, straight to the store. Only with --embedded.
    StoreGet,
}

impl Workload {
    /// One of YCSB's core workloads A-F.
    pub fn is_ycsb(self) -> bool {
        matches!(
            self,
            Workload::YcsbA
                | Workload::YcsbB
                | Workload::YcsbC
                | Workload::YcsbD
                | Workload::YcsbE
                | Workload::YcsbF
        )
    }

    /// A floor measurement (no key-value store involved).
    pub fn is_floor(self) -> bool {
        matches!(
            self,
            Workload::Ping | Workload::StorePut | Workload::StoreGet
        )
    }

    /// Whether the keyspace is written before measuring unless told otherwise.
    pub fn preloads_by_default(self) -> bool {
        matches!(self, Workload::Read | Workload::Scan) || self.is_ycsb()
    }

    /// The value sizes of a run: `--value-size` if given, else 1 KiB records for puts, YCSB and
    /// the floors, else the scale sheet's distribution.
    pub fn value_sizes(self, value_size: Option<usize>) -> ValueSizes {
        let fixed_kib = self == Workload::Put || self.is_ycsb() || self.is_floor();
        match (value_size, fixed_kib) {
            (Some(v), _) => ValueSizes::Fixed(v),
            (None, true) => ValueSizes::Fixed(1024),
            (None, false) => ValueSizes::scale_sheet(),
        }
    }

    /// YCSB's share of the first operation of the mix (read, or scan for E).
    fn ycsb_read_share(self) -> f64 {
        match self {
            Workload::YcsbA | Workload::YcsbF => 0.5,
            Workload::YcsbB | Workload::YcsbD | Workload::YcsbE => 0.95,
            _ => 1.0,
        }
    }
}

/// The operation types reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Get,
    Put,
    BatchGet,
    BatchWrite,
    Delete,
    Scan,
    /// A put of a key that did not exist (YCSB D and E).
    Insert,
    /// A read then a write of the same key (YCSB F), timed as one operation.
    ReadModifyWrite,
    /// An empty round trip or a raw object-store request (floor workloads).
    Floor,
}

impl OpKind {
    /// Number of kinds.
    pub const COUNT: usize = 9;

    /// All kinds, in report order.
    pub const ALL: [OpKind; OpKind::COUNT] = [
        OpKind::Get,
        OpKind::Put,
        OpKind::BatchGet,
        OpKind::BatchWrite,
        OpKind::Delete,
        OpKind::Scan,
        OpKind::Insert,
        OpKind::ReadModifyWrite,
        OpKind::Floor,
    ];

    /// Name used in the table and JSON.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::BatchGet => "batch_get",
            OpKind::BatchWrite => "batch_write",
            OpKind::Delete => "delete",
            OpKind::Scan => "scan",
            OpKind::Insert => "insert",
            OpKind::ReadModifyWrite => "read_modify_write",
            OpKind::Floor => "floor",
        }
    }

    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One planned request, in terms of key indexes and value sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpPlan {
    Get(u64),
    BatchGet(Vec<u64>),
    /// Key index and value size.
    Put(u64, usize),
    BatchWrite(Vec<(u64, usize)>),
    Delete(u64),
    /// Start key index and entry limit.
    Scan(u64, u32),
    /// A new key's index and value size.
    Insert(u64, usize),
    /// Key index and the size of the value written back.
    ReadModifyWrite(u64, usize),
    /// A floor request (value size for the store floors).
    Floor(usize),
}

impl OpPlan {
    /// The kind this plan is reported under.
    pub fn kind(&self) -> OpKind {
        match self {
            OpPlan::Get(_) => OpKind::Get,
            OpPlan::BatchGet(_) => OpKind::BatchGet,
            OpPlan::Put(..) => OpKind::Put,
            OpPlan::BatchWrite(_) => OpKind::BatchWrite,
            OpPlan::Delete(_) => OpKind::Delete,
            OpPlan::Scan(..) => OpKind::Scan,
            OpPlan::Insert(..) => OpKind::Insert,
            OpPlan::ReadModifyWrite(..) => OpKind::ReadModifyWrite,
            OpPlan::Floor(_) => OpKind::Floor,
        }
    }
}

/// Mix parameters for the generator.
#[derive(Debug, Clone)]
pub struct Mix {
    pub read_fraction: f64,
    pub batch_fraction: f64,
    pub batch_size: usize,
    /// Share of (single) writes that are deletes.
    pub delete_fraction: f64,
    pub scan_length: u32,
}

/// Plans the requests of one client.
#[derive(Debug, Clone)]
pub struct OpGenerator {
    workload: Workload,
    keys: KeyChooser,
    sizes: ValueSizes,
    mix: Mix,
    /// Load workload: next index and stride.
    load_next: u64,
    load_stride: u64,
    keyspace: u64,
    /// YCSB D and E: the next new key's index, shared by every client (starts at the
    /// keyspace size; keys below it are the preloaded ones).
    inserts: Arc<AtomicU64>,
    /// YCSB D: how far back from the latest insert a read lands (zipfian ranks; built only
    /// for D: the zeta sum is costly for large keyspaces).
    latest: Option<Zipfian>,
}

impl OpGenerator {
    /// A generator for client `client` of `clients`.
    pub fn new(
        workload: Workload,
        keys: KeyChooser,
        sizes: ValueSizes,
        mix: Mix,
        keyspace: u64,
        client: u64,
        clients: u64,
    ) -> Self {
        Self {
            workload,
            keys,
            sizes,
            mix,
            load_next: client,
            load_stride: clients.max(1),
            keyspace,
            inserts: Arc::new(AtomicU64::new(keyspace)),
            latest: (workload == Workload::YcsbD)
                .then(|| Zipfian::new(keyspace.max(1), Zipfian::DEFAULT_THETA)),
        }
    }

    /// Shares the counter of inserted keys (YCSB D and E) with other clients' generators.
    pub fn with_inserts(mut self, inserts: Arc<AtomicU64>) -> Self {
        self.inserts = inserts;
        self
    }

    /// A YCSB operation: `read` (or scan for E) with the workload's share, else its write.
    fn ycsb<R: Rng + ?Sized>(&mut self, rng: &mut R) -> OpPlan {
        let first = rng.random::<f64>() < self.workload.ycsb_read_share();
        match (self.workload, first) {
            (Workload::YcsbD, true) => {
                // Latest: ranks count back from the newest key written so far. Closed-loop
                // clients keep one request each in flight, so the last `clients` indexes
                // handed out may not be acknowledged yet: count back from before them (as
                // YCSB's acknowledged counter does), so reads rarely miss keys in flight.
                let newest = self
                    .inserts
                    .load(Ordering::Relaxed)
                    .saturating_sub(1 + self.load_stride)
                    .max(self.keyspace.saturating_sub(1));
                let back = self.latest.as_ref().map_or(0, |z| z.sample(rng));
                OpPlan::Get(newest.saturating_sub(back))
            }
            (Workload::YcsbE, true) => {
                let len = rng.random_range(1..=self.mix.scan_length.max(1));
                OpPlan::Scan(self.keys.sample(rng), len)
            }
            (Workload::YcsbD | Workload::YcsbE, false) => OpPlan::Insert(
                self.inserts.fetch_add(1, Ordering::Relaxed),
                self.sizes.sample(rng),
            ),
            (Workload::YcsbF, false) => {
                OpPlan::ReadModifyWrite(self.keys.sample(rng), self.sizes.sample(rng))
            }
            (_, true) => OpPlan::Get(self.keys.sample(rng)),
            (_, false) => OpPlan::Put(self.keys.sample(rng), self.sizes.sample(rng)),
        }
    }

    /// The next request, or `None` when this client's share is done (load).
    pub fn next<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<OpPlan> {
        let plan = match self.workload {
            Workload::Load => {
                if self.load_next >= self.keyspace {
                    return None;
                }
                let i = self.load_next;
                self.load_next += self.load_stride;
                OpPlan::Put(i, self.sizes.sample(rng))
            }
            Workload::Read => OpPlan::Get(self.keys.sample(rng)),
            Workload::Scan => OpPlan::Scan(self.keys.sample(rng), self.mix.scan_length),
            Workload::Put => OpPlan::Put(self.keys.sample(rng), self.sizes.sample(rng)),
            Workload::YcsbA
            | Workload::YcsbB
            | Workload::YcsbC
            | Workload::YcsbD
            | Workload::YcsbE
            | Workload::YcsbF => self.ycsb(rng),
            Workload::Ping | Workload::StorePut | Workload::StoreGet => {
                OpPlan::Floor(self.sizes.sample(rng))
            }
            Workload::Default => {
                let read = rng.random::<f64>() < self.mix.read_fraction;
                let batch =
                    self.mix.batch_size > 1 && rng.random::<f64>() < self.mix.batch_fraction;
                match (read, batch) {
                    (true, false) => OpPlan::Get(self.keys.sample(rng)),
                    (true, true) => OpPlan::BatchGet(
                        (0..self.mix.batch_size)
                            .map(|_| self.keys.sample(rng))
                            .collect(),
                    ),
                    (false, true) => OpPlan::BatchWrite(
                        (0..self.mix.batch_size)
                            .map(|_| (self.keys.sample(rng), self.sizes.sample(rng)))
                            .collect(),
                    ),
                    (false, false) => {
                        if self.mix.delete_fraction > 0.0
                            && rng.random::<f64>() < self.mix.delete_fraction
                        {
                            OpPlan::Delete(self.keys.sample(rng))
                        } else {
                            OpPlan::Put(self.keys.sample(rng), self.sizes.sample(rng))
                        }
                    }
                }
            }
        };
        Some(plan)
    }
}

/// Splits `[0, keys)` into preload batches for client `client` of `clients`
/// (client c takes keys c, c+N, ...), each at most `batch_size` keys and,
/// unless a single value is larger, at most `max_bytes` of values.
pub fn preload_batches(
    keys: u64,
    client: u64,
    clients: u64,
    batch_size: usize,
    max_bytes: usize,
    mut size_of: impl FnMut(u64) -> usize,
) -> Vec<Vec<(u64, usize)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(u64, usize)> = Vec::new();
    let mut cur_bytes = 0usize;
    let mut i = client;
    while i < keys {
        let len = size_of(i);
        if !cur.is_empty() && (cur.len() >= batch_size.max(1) || cur_bytes + len > max_bytes) {
            out.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur.push((i, len));
        cur_bytes += len;
        i += clients.max(1);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn keys_are_fixed_width_and_ordered() {
        let f = KeyFormat::new(50, 100_000).expect("fits");
        let a = f.key(7);
        let b = f.key(99_999);
        assert_eq!(a.len(), 50);
        assert_eq!(b.len(), 50);
        assert!(a < b);
        assert!(a.starts_with(b"key000"));
        assert!(a.ends_with(b"0007"));
        assert_eq!(f.key(7), a, "deterministic");
        assert_eq!(&f.key(0)[..], format!("key{:0>47}", 0).as_bytes());
        assert_eq!(
            &f.key(1_234_567)[..],
            format!("key{:0>47}", 1_234_567).as_bytes()
        );
        assert!(KeyFormat::new(7, 100_000).is_err());
        assert!(KeyFormat::new(8, 100_000).is_ok());
    }

    #[test]
    fn value_size_bucket_shares() {
        let mut rng = SmallRng::seed_from_u64(1);
        let sizes = ValueSizes::scale_sheet();
        let n = 100_000;
        let mut counts = [0usize; 5];
        for _ in 0..n {
            let s = sizes.sample(&mut rng);
            let b = SCALE_SHEET_BUCKETS
                .iter()
                .position(|&(lo, hi, _)| (lo..=hi).contains(&s))
                .expect("size inside some bucket");
            counts[b] += 1;
        }
        for (i, &(_, _, share)) in SCALE_SHEET_BUCKETS.iter().enumerate() {
            let got = counts[i] as f64 / n as f64;
            assert!(
                (got - share).abs() <= 0.01,
                "bucket {i}: got {got:.4}, want {share}"
            );
        }
        assert_eq!(ValueSizes::Fixed(1024).sample(&mut rng), 1024);
    }

    #[test]
    fn value_sizes_respect_limits() {
        let mut rng = SmallRng::seed_from_u64(2);
        let sizes = ValueSizes::scale_sheet();
        let pool = ValuePool::new(&mut rng);
        for _ in 0..10_000 {
            let s = sizes.sample(&mut rng);
            assert!(s <= MAX_VALUE_BYTES);
            assert_eq!(pool.value(&mut rng, s).len(), s);
        }
        assert_eq!(pool.value(&mut rng, MAX_VALUE_BYTES).len(), MAX_VALUE_BYTES);
    }

    #[test]
    fn zipfian_is_skewed() {
        let n = 1000;
        let z = Zipfian::new(n, Zipfian::DEFAULT_THETA);
        let mut rng = SmallRng::seed_from_u64(3);
        let samples = 200_000;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..samples {
            let r = z.sample(&mut rng);
            assert!(r < n);
            counts[r as usize] += 1;
        }
        let p0 = counts[0] as f64 / samples as f64;
        assert!(
            (p0 - z.p0()).abs() < 0.1 * z.p0(),
            "rank 0 share {p0}, expected {}",
            z.p0()
        );
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
        // The hottest 10% of items take well over half the requests.
        let top: u64 = counts[..100].iter().sum();
        assert!(top as f64 / samples as f64 > 0.6, "top 10% share {top}");
        // Rank 1 about p0 / 2^theta.
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((ratio - 2f64.powf(0.99)).abs() < 0.2, "ratio {ratio}");
    }

    #[test]
    fn zipfian_large_n_uses_approximation_sanely() {
        let exact = zeta(10_000_000, 0.99);
        let approx_part = {
            let m = 1_000_000u64;
            let mut s = 0.0;
            for i in 1..=m {
                s += 1.0 / (i as f64).powf(0.99);
            }
            let f = |x: f64| x.powf(0.01) / 0.01;
            s + f(10_000_000.5) - f(1_000_000.5)
        };
        assert!((exact - approx_part).abs() / exact < 1e-6);
        let z = Zipfian::new(1_000_000_000, 0.99);
        let mut rng = SmallRng::seed_from_u64(4);
        for _ in 0..1000 {
            assert!(z.sample(&mut rng) < 1_000_000_000);
        }
        assert_eq!(Zipfian::new(1, 0.99).sample(&mut rng), 0);
    }

    #[test]
    fn scramble_is_a_permutation() {
        for n in [1u64, 2, 3, 10, 97, 1000, 4096] {
            let s = Scramble::new(n);
            let mut seen = vec![false; n as usize];
            for r in 0..n {
                let m = s.map(r);
                assert!(!seen[m as usize], "n={n}: {m} twice");
                seen[m as usize] = true;
            }
        }
    }

    fn mix() -> Mix {
        Mix {
            read_fraction: 0.7,
            batch_fraction: 0.2,
            batch_size: 16,
            delete_fraction: 0.0,
            scan_length: 100,
        }
    }

    #[test]
    fn default_mix_shares() {
        let mut g = OpGenerator::new(
            Workload::Default,
            KeyChooser::uniform(1000),
            ValueSizes::Fixed(10),
            mix(),
            1000,
            0,
            1,
        );
        let mut rng = SmallRng::seed_from_u64(5);
        let n = 100_000;
        let mut counts = [0usize; 6];
        for _ in 0..n {
            let p = g.next(&mut rng).expect("endless");
            match &p {
                OpPlan::BatchGet(k) => assert_eq!(k.len(), 16),
                OpPlan::BatchWrite(k) => assert_eq!(k.len(), 16),
                _ => {}
            }
            counts[p.kind().index()] += 1;
        }
        let share = |k: OpKind| counts[k.index()] as f64 / n as f64;
        let reads = share(OpKind::Get) + share(OpKind::BatchGet);
        let batches = share(OpKind::BatchGet) + share(OpKind::BatchWrite);
        assert!((reads - 0.7).abs() < 0.01, "reads {reads}");
        assert!((batches - 0.2).abs() < 0.01, "batches {batches}");
        assert!((share(OpKind::BatchGet) - 0.14).abs() < 0.01);
        assert_eq!(counts[OpKind::Delete.index()], 0);
        assert_eq!(counts[OpKind::Scan.index()], 0);
    }

    #[test]
    fn load_strides_cover_keyspace_once() {
        let keys = 1003;
        let clients = 8;
        let mut seen = vec![0u8; keys as usize];
        let mut rng = SmallRng::seed_from_u64(6);
        for c in 0..clients {
            let mut g = OpGenerator::new(
                Workload::Load,
                KeyChooser::uniform(keys),
                ValueSizes::Fixed(1),
                mix(),
                keys,
                c,
                clients,
            );
            while let Some(p) = g.next(&mut rng) {
                match p {
                    OpPlan::Put(i, 1) => seen[i as usize] += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
    }

    #[test]
    fn other_workloads_plan_their_op() {
        let mut rng = SmallRng::seed_from_u64(7);
        for (w, kind) in [
            (Workload::Read, OpKind::Get),
            (Workload::Scan, OpKind::Scan),
            (Workload::Put, OpKind::Put),
        ] {
            let mut g = OpGenerator::new(
                w,
                KeyChooser::zipfian(100, 0.99),
                ValueSizes::Fixed(1024),
                mix(),
                100,
                0,
                4,
            );
            for _ in 0..100 {
                let p = g.next(&mut rng).expect("endless");
                assert_eq!(p.kind(), kind);
                if let OpPlan::Scan(_, n) = p {
                    assert_eq!(n, 100);
                }
                if let OpPlan::Put(_, s) = p {
                    assert_eq!(s, 1024);
                }
            }
        }
    }

    #[test]
    fn preload_batches_bounded() {
        let sizes = |i: u64| if i.is_multiple_of(10) { 900 } else { 100 };
        let mut seen = 0;
        for c in 0..3 {
            for b in preload_batches(100, c, 3, 8, 1000, sizes) {
                assert!(!b.is_empty() && b.len() <= 8);
                let bytes: usize = b.iter().map(|x| x.1).sum();
                assert!(bytes <= 1000 || b.len() == 1, "{bytes}");
                assert!(b.iter().all(|&(i, _)| i % 3 == c));
                seen += b.len();
            }
        }
        assert_eq!(seen, 100);
    }

    fn ycsb(workload: Workload, client: u64) -> OpGenerator {
        OpGenerator::new(
            workload,
            KeyChooser::zipfian(1000, Zipfian::DEFAULT_THETA),
            ValueSizes::Fixed(1024),
            mix(),
            1000,
            client,
            4,
        )
    }

    #[test]
    fn ycsb_mixes_have_their_shares() {
        let mut rng = SmallRng::seed_from_u64(9);
        let n = 20_000;
        for (w, first, first_share, second) in [
            (Workload::YcsbA, OpKind::Get, 0.5, OpKind::Put),
            (Workload::YcsbB, OpKind::Get, 0.95, OpKind::Put),
            (Workload::YcsbC, OpKind::Get, 1.0, OpKind::Put),
            (Workload::YcsbD, OpKind::Get, 0.95, OpKind::Insert),
            (Workload::YcsbE, OpKind::Scan, 0.95, OpKind::Insert),
            (Workload::YcsbF, OpKind::Get, 0.5, OpKind::ReadModifyWrite),
        ] {
            let mut g = ycsb(w, 0);
            let mut firsts = 0;
            for _ in 0..n {
                let p = g.next(&mut rng).expect("endless");
                let k = p.kind();
                assert!(k == first || k == second, "{w:?} planned {k:?}");
                firsts += usize::from(k == first);
                if let OpPlan::Scan(_, len) = p {
                    assert!((1..=mix().scan_length).contains(&len), "scan length {len}");
                }
            }
            let got = firsts as f64 / n as f64;
            assert!(
                (got - first_share).abs() < 0.02,
                "{w:?}: {got} vs {first_share}"
            );
        }
    }

    #[test]
    fn ycsb_inserts_take_fresh_keys_and_d_reads_the_latest() {
        let mut rng = SmallRng::seed_from_u64(10);
        let inserts = Arc::new(AtomicU64::new(1000));
        let mut a = ycsb(Workload::YcsbD, 0).with_inserts(inserts.clone());
        let mut b = ycsb(Workload::YcsbE, 1).with_inserts(inserts.clone());
        let mut seen = std::collections::HashSet::new();
        let mut reads = Vec::new();
        for _ in 0..20_000 {
            for g in [&mut a, &mut b] {
                match g.next(&mut rng).expect("endless") {
                    OpPlan::Insert(i, _) => {
                        assert!(i >= 1000, "inserts go past the keyspace");
                        assert!(seen.insert(i), "key {i} inserted twice");
                    }
                    OpPlan::Get(i) => reads.push((i, inserts.load(Ordering::Relaxed))),
                    _ => {}
                }
            }
        }
        assert!(seen.len() > 1000);
        // Reads of D stay below the keys still in flight and favour the newest.
        let near = reads
            .iter()
            .filter(|(i, issued)| *i < *issued && issued - i <= 100)
            .count();
        assert!(reads.iter().all(|(i, issued)| i < issued));
        assert!(
            near as f64 / reads.len() as f64 > 0.5,
            "{near} of {}",
            reads.len()
        );
    }
}
