//! The client_response fuzz corpus (fuzz/corpus/client_response/) replayed through
//! `bench_client::fuzz_response`: what bench-client parses from servers.

#[test]
fn client_response_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/client_response");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        assert!(std::panic::catch_unwind(|| bench_client::fuzz_response(&data)).is_ok(), "{} panics", path.display());
        n += 1;
    }
    assert!(n >= 4, "corpus of {n}");
}
