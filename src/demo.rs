//! The demo page that `customws serve --dev` answers at `GET /`.
//!
//! It is one self-contained HTML file (styles and the bundled TypeScript SDK inlined), built
//! from `clients/demo/src` by `npm run build` in `clients/demo` and committed, so the binary
//! needs no Node and no other route at run time. `npm run check` (CI) fails when the committed
//! file no longer matches its source.

/// Content type of [`INDEX_HTML`].
pub const INDEX_CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// The built page (`clients/demo/dist/index.html`).
pub const INDEX_HTML: &[u8] = include_bytes!("../clients/demo/dist/index.html");

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> &'static str {
        std::str::from_utf8(INDEX_HTML).expect("the page is UTF-8")
    }

    #[test]
    fn is_a_complete_html_document() {
        let html = page();
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.trim_end().ends_with("</html>"));
        assert!(INDEX_CONTENT_TYPE.starts_with("text/html"));
    }

    #[test]
    fn inlines_its_script_and_loads_nothing_else() {
        let html = page();
        assert!(html.contains("<script type=\"module\">"));
        assert!(
            !html.contains("<!-- bundle -->"),
            "bundle marker left in: build.mjs did not run"
        );
        // Only / is served: every reference must be inline (`data:`).
        for attr in ["src=\"", "href=\""] {
            for (at, _) in html.match_indices(attr) {
                let value = html.get(at + attr.len()..).unwrap_or_default();
                assert!(
                    value.starts_with("data:"),
                    "external {attr}... at byte {at}"
                );
            }
        }
        // The one inline script must be closed exactly once.
        assert_eq!(html.matches("</script").count(), 1);
    }

    #[test]
    fn authenticates_with_the_subprotocol_pair() {
        let html = page();
        assert!(html.contains("customws.v1"));
        assert!(html.contains("bearer."));
    }
}
