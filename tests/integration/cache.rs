//! The on-disk compile cache.

use imbed::{Imbed, PluginHealth};
use imbed_tests::{PluginSpec, TestConfig};

fn from_cache(imbed: &Imbed) -> bool {
    match &imbed.plugins()[0].health {
        PluginHealth::Ready { from_cache, .. } => *from_cache,
        PluginHealth::Failed { message, .. } => panic!("plugin failed to load: {message}"),
    }
}

#[tokio::test]
async fn the_second_start_loads_the_compiled_plugin_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new()
        .plugin("hash", PluginSpec::hash())
        .hash("hash")
        .cache_dir(dir.path())
        .build();
    let first = Imbed::new(config.clone()).await.unwrap();
    assert!(!from_cache(&first));
    let entries: Vec<_> = std::fs::read_dir(dir.path().join("components"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(entries.len(), 1);
    let second = Imbed::new(config.clone()).await.unwrap();
    assert!(from_cache(&second));

    // A damaged entry is ignored and rewritten, never trusted.
    std::fs::write(entries[0].path(), b"garbage").unwrap();
    let third = Imbed::new(config.clone()).await.unwrap();
    assert!(!from_cache(&third));
    third.embed_text("still works").await.unwrap();
    let fourth = Imbed::new(config).await.unwrap();
    assert!(from_cache(&fourth));
}
