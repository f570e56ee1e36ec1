//! The page and what it loads, compiled into the binary: the machines
//! Sluice runs on are often offline, so nothing comes from a CDN. uPlot is
//! vendored from npm (version and licence in `assets/VENDORED.md`).

pub(crate) struct Asset {
    pub bytes: &'static [u8],
    pub content_type: &'static str,
}

/// A file of `assets/`, typed by its extension.
macro_rules! asset {
    ($file:literal) => {
        (
            $file,
            Asset {
                bytes: include_bytes!(concat!("../assets/", $file)),
                content_type: content_type($file),
            },
        )
    };
}

const fn content_type(file: &str) -> &'static str {
    match file.as_bytes() {
        [.., b'.', b'c', b's', b's'] => "text/css; charset=utf-8",
        [.., b'.', b'j', b's'] => "text/javascript; charset=utf-8",
        _ => "text/html; charset=utf-8",
    }
}

const ASSETS: [(&str, Asset); 5] = [
    asset!("index.html"),
    asset!("console.js"),
    asset!("console.css"),
    asset!("uPlot.iife.min.js"),
    asset!("uPlot.min.css"),
];

/// The asset named `file` (a bare name: paths never reach the disk).
pub(crate) fn find(file: &str) -> Option<&'static Asset> {
    ASSETS
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, a)| a)
}

#[cfg(test)]
mod tests {
    #[test]
    fn assets_are_typed_by_extension() {
        assert_eq!(
            super::find("console.css").map(|a| a.content_type),
            Some("text/css; charset=utf-8")
        );
        assert_eq!(
            super::find("uPlot.iife.min.js").map(|a| a.content_type),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            super::find("index.html").map(|a| a.content_type),
            Some("text/html; charset=utf-8")
        );
        assert!(super::find("../Cargo.toml").is_none());
    }
}
