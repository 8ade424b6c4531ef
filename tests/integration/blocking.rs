//! The blocking facade, from plain threads and from inside tokio runtimes.

use imbed::{BlockingImbed, ImageRequest, ImageSource};
use imbed_tests::{images, PluginSpec, TestConfig};

fn facade() -> BlockingImbed {
    BlockingImbed::new(
        TestConfig::new()
            .plugin("hash", PluginSpec::hash())
            .hash("hash")
            .build(),
    )
    .unwrap()
}

#[test]
fn works_from_a_plain_thread() {
    let b = facade();
    let e = b
        .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(
            16, 16, 1,
        ))))
        .unwrap();
    assert_eq!(e.vector.len(), 256);
    assert_eq!(
        b.embed_text("hello").unwrap().provenance.space,
        "imbed-hash/text@v1:256"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn works_inside_a_current_thread_runtime() {
    // The situation of "this event loop is already running": sync code called from async code.
    let b = facade();
    let e = b
        .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(
            16, 16, 2,
        ))))
        .unwrap();
    assert_eq!(e.provenance.plugin.key, "hash");
    drop(b); // dropping inside the runtime must not panic either
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_a_multi_thread_runtime() {
    let b = facade();
    assert!(b.embed_text("inside tokio").is_ok());
    let err = b
        .embed_image(ImageRequest::new(ImageSource::Bytes(vec![])))
        .unwrap_err();
    assert!(matches!(
        err,
        imbed::Error::Input(imbed::InputError::Empty(_))
    ));
}
