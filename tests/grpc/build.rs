//! Generates the Echo service's client and server with tonic-build's manual builder: the
//! messages are written in Rust (src/lib.rs), so no protoc is needed.

fn main() {
    let method = |name: &str, route: &str, streaming: bool| {
        let b = tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type("crate::Hello")
            .output_type("crate::Reply")
            .codec_path("tonic_prost::ProstCodec");
        if streaming {
            b.server_streaming().build()
        } else {
            b.build()
        }
    };
    let echo = tonic_build::manual::Service::builder()
        .name("Echo")
        .package("understudy.test")
        .method(method("say", "Say", false))
        .method(method("count", "Count", true))
        .build();
    tonic_build::manual::Builder::new().compile(&[echo]);
}
