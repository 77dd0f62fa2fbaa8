//! Generated test data, shared by the integration tests and the benchmarks
//! (which include this file by path).

/// Incompressible bytes (xorshift), so compressed layers are as large as their data.
pub fn noise(n: usize) -> Vec<u8> {
    let mut x = 88172645463325252u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
