//! Compile time of the gateway tables for large overlapping ipBlock sets (issue target: 100k
//! ipBlocks with excepts over 1k policies in under 1 s). Run: `cargo bench -p portcullis-policy`.

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_policy::compile::compile_gateway;
use portcullis_policy::synth::{ipblock_snapshot, IpBlockScale};

fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile_gateway");
    group.sample_size(10);
    for (label, apps) in [
        ("100k-ipblocks-1k-policies-10-groups", 10),
        ("100k-ipblocks-1k-policies-1-group", 1),
    ] {
        let snapshot = ipblock_snapshot(IpBlockScale {
            policies: 1000,
            ip_blocks: 100_000,
            pods: 100,
            apps,
            seed: 7,
        });
        group.bench_function(label, |b| {
            b.iter(|| compile_gateway(&snapshot).expect("compiles"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_compile);
criterion_main!(benches);
