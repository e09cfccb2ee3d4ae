//! SMS text rewriting for `POST /api/v1/messages/shorten`: find every `http(s)` URL and every
//! `[opt-out-link]` placeholder. Pure; the API decides what each piece is replaced with.
//!
//! URL boundaries come from `linkify`, which already knows that a sentence's trailing `.`, `,`, `!`, `?`
//! or an unbalanced `)` is not part of the link.

use linkify::{LinkFinder, LinkKind};

/// The placeholder replaced by an opt-out short URL.
pub const OPT_OUT_PLACEHOLDER: &str = "[opt-out-link]";

/// One piece of an SMS text, in order; concatenating the pieces gives back the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Url(&'a str),
    OptOut,
}

/// Splits `text` into plain text, `http(s)` URLs and opt-out placeholders.
pub fn split(text: &str) -> Vec<Piece<'_>> {
    let mut finder = LinkFinder::new();
    finder.kinds(&[LinkKind::Url]);
    let mut pieces = Vec::new();
    let mut chunks = text.split(OPT_OUT_PLACEHOLDER).peekable();
    while let Some(chunk) = chunks.next() {
        let mut last = 0;
        for link in finder.links(chunk) {
            let url = link.as_str();
            let scheme_ok = url.len() > 8
                && (url[..7].eq_ignore_ascii_case("http://") || url[..8].eq_ignore_ascii_case("https://"));
            if !scheme_ok {
                continue;
            }
            if link.start() > last {
                pieces.push(Piece::Text(&chunk[last..link.start()]));
            }
            pieces.push(Piece::Url(url));
            last = link.end();
        }
        if last < chunk.len() {
            pieces.push(Piece::Text(&chunk[last..]));
        }
        if chunks.peek().is_some() {
            pieces.push(Piece::OptOut);
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use Piece::*;

    fn urls(text: &str) -> Vec<&str> {
        split(text).into_iter().filter_map(|p| if let Url(u) = p { Some(u) } else { None }).collect()
    }

    #[test]
    fn finds_urls_without_trailing_punctuation() {
        let cases: &[(&str, &[&str])] = &[
            ("Sale! https://shop.example/fall.", &["https://shop.example/fall"]),
            ("See https://a.example/x, then http://b.example/y!", &["https://a.example/x", "http://b.example/y"]),
            ("(details: https://a.example/p)", &["https://a.example/p"]),
            (
                "wiki https://en.wikipedia.org/wiki/Link_(disambiguation) ok",
                &["https://en.wikipedia.org/wiki/Link_(disambiguation)"],
            ),
            ("Is it https://a.example/q?x=1&y=2?", &["https://a.example/q?x=1&y=2"]),
            ("no links here", &[]),
            ("ftp://files.example/a and mailto:x@y.example are not shortened", &[]),
            ("HTTPS://LOUD.EXAMPLE/A", &["HTTPS://LOUD.EXAMPLE/A"]),
            ("two:https://a.example/1\nhttps://b.example/2", &["https://a.example/1", "https://b.example/2"]),
            ("www.example.com has no scheme", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(&urls(text), want, "{text}");
        }
    }

    #[test]
    fn pieces_reassemble_and_find_placeholders() {
        let text = "Hi! Shop https://s.example/a. Stop: [opt-out-link] or [opt-out-link]";
        let pieces = split(text);
        assert_eq!(
            pieces,
            vec![Text("Hi! Shop "), Url("https://s.example/a"), Text(". Stop: "), OptOut, Text(" or "), OptOut,]
        );
        let rebuilt: String = pieces
            .iter()
            .map(|p| match p {
                Text(t) | Url(t) => *t,
                OptOut => OPT_OUT_PLACEHOLDER,
            })
            .collect();
        assert_eq!(rebuilt, text);
    }

    #[test]
    fn empty_text() {
        assert!(split("").is_empty());
        assert_eq!(split(OPT_OUT_PLACEHOLDER), vec![OptOut]);
    }
}
