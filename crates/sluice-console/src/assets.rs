//! The page and what it loads, compiled into the binary: the machines
//! Sluice runs on are often offline, so nothing comes from a CDN. uPlot is
//! vendored from npm (version and licence in `assets/VENDORED.md`).

pub(crate) struct Asset {
    pub bytes: &'static [u8],
    pub content_type: &'static str,
}

const ASSETS: [(&str, Asset); 5] = [
    (
        "index.html",
        Asset {
            bytes: include_bytes!("../assets/index.html"),
            content_type: "text/html; charset=utf-8",
        },
    ),
    (
        "console.js",
        Asset {
            bytes: include_bytes!("../assets/console.js"),
            content_type: "text/javascript; charset=utf-8",
        },
    ),
    (
        "console.css",
        Asset {
            bytes: include_bytes!("../assets/console.css"),
            content_type: "text/css; charset=utf-8",
        },
    ),
    (
        "uPlot.iife.min.js",
        Asset {
            bytes: include_bytes!("../assets/uPlot.iife.min.js"),
            content_type: "text/javascript; charset=utf-8",
        },
    ),
    (
        "uPlot.min.css",
        Asset {
            bytes: include_bytes!("../assets/uPlot.min.css"),
            content_type: "text/css; charset=utf-8",
        },
    ),
];

/// The asset named `file` (a bare name: paths never reach the disk).
pub(crate) fn find(file: &str) -> Option<&'static Asset> {
    ASSETS
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, a)| a)
}
