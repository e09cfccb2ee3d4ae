//! Classification cost per hit: cold (every user agent parsed: rules, isbot, woothee) and memoised
//! (the pipeline's steady state: user agents repeat).
//!
//! Run: `cargo bench --bench classify`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use linkhit::click::classify::{Classifier, Rules, Signals};

const CORPUS: &str = include_str!("../tests/data/user_agents.tsv");

fn bench(c: &mut Criterion) {
    let agents: Vec<&str> = CORPUS.lines().filter_map(|l| l.splitn(3, '\t').nth(2)).collect();
    let rules = Arc::new(Rules::builtin());
    let mut i = 0usize;
    c.bench_function("classify/cold_corpus_mix", |b| {
        b.iter(|| {
            i = (i + 1) % agents.len();
            black_box(rules.classify(Signals { user_agent: Some(black_box(agents[i])), ..Default::default() }))
        })
    });
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
    c.bench_function("classify/cold_iphone_safari", |b| {
        b.iter(|| black_box(rules.classify_user_agent(black_box(iphone))))
    });
    let mut classifier = Classifier::new(Arc::clone(&rules), 100_000);
    c.bench_function("classify/memoised_corpus_mix", |b| {
        b.iter(|| {
            i = (i + 1) % agents.len();
            black_box(classifier.classify(Signals { user_agent: Some(black_box(agents[i])), ..Default::default() }))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
