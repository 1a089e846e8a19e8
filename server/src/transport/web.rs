//! The web client's files, embedded in the binary at build time.
//!
//! `web/dist/` is built from `web/src/` by `web/build.sh` (pinned npm
//! packages, one esbuild bundle) and committed, so building quipd needs no
//! Node.js; CI rebuilds it and fails if the result differs.

/// One embedded file.
pub struct Asset {
    /// The URL path it is served at.
    pub path: &'static str,
    /// Its Content-Type.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

/// Every file the web client needs, plus the protocol schema it parses.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../../web/dist/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../web/dist/app.js"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../web/dist/app.css"),
    },
    Asset {
        path: "/quip.proto",
        content_type: "text/plain; charset=utf-8",
        body: quip_protocol::SCHEMA.as_bytes(),
    },
];

/// The asset served at `path`.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}
