//! What text a client may put where others will read it: display names, room names and chat.
//!
//! Other people see these strings, so they must not be able to lie about what surrounds them.
//! The rule is to **reject, not rewrite**: a client learns at once (with `invalid-message`
//! naming the field and the character) instead of seeing its text silently changed, and what
//! others see is byte for byte what was sent.
//!
//! - Names and room names are identifiers people recognise each other by: no control
//!   characters (Unicode Cc), no format characters (Cf: the bidi embeddings, overrides and
//!   isolates, the bidi marks, zero-width spaces and joiners, the BOM, invisible operators, tag
//!   characters), and no line or paragraph separators (U+2028, U+2029). Otherwise "Ann" and
//!   "An\u{200B}n" would be two people who look the same, and a U+202E could turn a name around.
//! - Chat keeps `\n` as a real line break inside one message (clients render the message as
//!   one block under its author, so a line break cannot start a fake line from someone else)
//!   and refuses the rest of the same set: `\r`, every other control, the bidi controls, and
//!   the separators. Zero-width joiners (U+200C, U+200D) are allowed in chat between two
//!   visible non-ASCII characters only, where emoji sequences (👩‍💻) and scripts such as
//!   Persian need them; everywhere else they are refused like any format character.
//!
//! This module must not trim, normalise or truncate: callers decide about surrounding
//! whitespace and lengths.

/// Why a piece of text is refused: the first character that is not allowed, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub ch: char,
    /// Position in characters (not bytes), counting from 0.
    pub at: usize,
}

impl Refused {
    /// `U+202E (a bidi control) at character 3`, for error messages.
    pub fn describe(&self) -> String {
        format!(
            "U+{:04X} ({}) at character {}",
            self.ch as u32,
            class_name(self.ch),
            self.at
        )
    }
}

/// Checks a display name or a room name.
pub fn check_label(text: &str) -> Result<(), Refused> {
    match text.chars().enumerate().find(|(_, c)| is_hidden(*c)) {
        Some((at, ch)) => Err(Refused { ch, at }),
        None => Ok(()),
    }
}

/// Checks a chat message: like [`check_label`], but `\n` is a line break, and joiners may sit
/// between two visible non-ASCII characters.
pub fn check_chat(text: &str) -> Result<(), Refused> {
    let chars: Vec<char> = text.chars().collect();
    for (at, &ch) in chars.iter().enumerate() {
        let allowed = ch == '\n'
            || (is_joiner(ch)
                && at > 0
                && chars
                    .get(at + 1)
                    .is_some_and(|next| joinable(chars[at - 1]) && joinable(*next)))
            || !is_hidden(ch);
        if !allowed {
            return Err(Refused { ch, at });
        }
    }
    Ok(())
}

/// Characters that are invisible or change how the text around them is shown.
fn is_hidden(c: char) -> bool {
    c.is_control() || is_format(c) || c == '\u{2028}' || c == '\u{2029}'
}

fn is_joiner(c: char) -> bool {
    c == '\u{200C}' || c == '\u{200D}'
}

/// A character a joiner may connect: visible and outside ASCII (emoji, letters of scripts that
/// use joiners). ASCII neighbours are refused so a joiner cannot hide inside a Latin word.
fn joinable(c: char) -> bool {
    !c.is_ascii() && !is_hidden(c) && !c.is_whitespace()
}

fn class_name(c: char) -> &'static str {
    match c {
        '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{061C}' => "a bidi control",
        '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' => "a zero-width character",
        '\u{2028}' | '\u{2029}' => "a line or paragraph separator",
        c if c.is_control() => "a control character",
        _ => "an invisible format character",
    }
}

/// Unicode general category Cf (format), from the Unicode 15.1 character database. The
/// standard library has no category lookup, and this short table does not justify a
/// dependency; a character added to Cf by a later Unicode version is unassigned today, and
/// clients cannot type unassigned characters anyway.
fn is_format(c: char) -> bool {
    const CF: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),   // soft hyphen
        (0x0600, 0x0605),   // Arabic number signs
        (0x061C, 0x061C),   // Arabic letter mark (bidi)
        (0x06DD, 0x06DD),   // Arabic end of ayah
        (0x070F, 0x070F),   // Syriac abbreviation mark
        (0x0890, 0x0891),   // Arabic pound and piastre marks above
        (0x08E2, 0x08E2),   // Arabic disputed end of ayah
        (0x180E, 0x180E),   // Mongolian vowel separator
        (0x200B, 0x200F),   // zero-width space, ZWNJ, ZWJ, LRM, RLM
        (0x202A, 0x202E),   // bidi embeddings and overrides
        (0x2060, 0x2064),   // word joiner, invisible operators
        (0x2066, 0x206F),   // bidi isolates, deprecated format characters
        (0xFEFF, 0xFEFF),   // zero-width no-break space (BOM)
        (0xFFF9, 0xFFFB),   // interlinear annotation
        (0x110BD, 0x110BD), // Kaithi number sign
        (0x110CD, 0x110CD), // Kaithi number sign above
        (0x13430, 0x1343F), // Egyptian hieroglyph format controls
        (0x1BCA0, 0x1BCA3), // shorthand format controls
        (0x1D173, 0x1D17A), // musical symbol beams, ties, slurs, phrases
        (0xE0001, 0xE0001), // language tag
        (0xE0020, 0xE007F), // tag characters
    ];
    let c = c as u32;
    CF.iter().any(|&(first, last)| (first..=last).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every character the issue names, and the rest of the classes.
    const HIDDEN: &[char] = &[
        '\u{202A}',
        '\u{202B}',
        '\u{202C}',
        '\u{202D}',
        '\u{202E}', // embeddings, overrides
        '\u{2066}',
        '\u{2067}',
        '\u{2068}',
        '\u{2069}', // isolates
        '\u{200E}',
        '\u{200F}',
        '\u{061C}', // marks
        '\u{200B}',
        '\u{200C}',
        '\u{200D}',
        '\u{2060}',
        '\u{FEFF}', // zero width
        '\u{00AD}',
        '\u{2062}',
        '\u{E0041}',
        '\u{1D173}', // other Cf
        '\u{0}',
        '\u{7}',
        '\t',
        '\r',
        '\n',
        '\u{1B}',
        '\u{7F}',
        '\u{85}',
        '\u{9F}', // Cc
        '\u{2028}',
        '\u{2029}', // separators
    ];

    #[test]
    fn labels_refuse_every_hidden_character_wherever_it_is() {
        for &c in HIDDEN {
            for text in [format!("{c}Ann"), format!("An{c}n"), format!("Ann{c}")] {
                let refused = check_label(&text).unwrap_err();
                assert_eq!(refused.ch, c, "{text:?}");
                assert_eq!(text.chars().nth(refused.at), Some(c));
            }
        }
    }

    #[test]
    fn ordinary_names_in_any_script_pass() {
        for name in [
            "Ann",
            "Jean-Luc Picard",
            "Zoë",
            "محمد",
            "שרה",
            "李小龍",
            "Ελένη",
            "🦀 crab",
            "👍🏽",
            "e\u{301}",  // combining acute: a mark (Mn), not a format character
            "☃\u{FE0F}", // variation selector: a mark too
            "a b",
            "café ☕",
        ] {
            assert_eq!(check_label(name), Ok(()), "{name:?}");
            assert_eq!(check_chat(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn chat_keeps_line_breaks_and_refuses_the_rest() {
        assert_eq!(check_chat("first line\nsecond line\n\nthird"), Ok(()));
        for &c in HIDDEN.iter().filter(|&&c| c != '\n') {
            let text = format!("hello{c}world");
            assert_eq!(check_chat(&text).unwrap_err().ch, c, "{text:?}");
        }
        // A carriage return could redraw a line in a terminal log; \r\n is refused as well.
        assert_eq!(check_chat("a\r\nb"), Err(Refused { ch: '\r', at: 1 }));
    }

    #[test]
    fn chat_allows_joiners_only_inside_emoji_and_non_latin_words() {
        assert_eq!(check_chat("👩\u{200D}💻 on call"), Ok(()));
        assert_eq!(check_chat("🏳\u{FE0F}\u{200D}🌈"), Ok(()));
        assert_eq!(check_chat("می\u{200C}خواهم"), Ok(())); // Persian, with ZWNJ
        for text in [
            "\u{200D}👩",
            "👩\u{200D}",
            "b\u{200D}ad",
            "👩\u{200D} x",
            "👩\u{200D}\u{200D}💻",
            "👩\u{200D}\n💻",
        ] {
            assert!(check_chat(text).is_err(), "{text:?}");
        }
        // Names never take them: two names that look the same must be the same.
        assert!(check_label("👩\u{200D}💻").is_err());
    }

    #[test]
    fn refusals_say_what_and_where() {
        let r = check_label("ab\u{202E}c").unwrap_err();
        assert_eq!(r.describe(), "U+202E (a bidi control) at character 2");
        let r = check_label("\u{FEFF}x").unwrap_err();
        assert_eq!(
            r.describe(),
            "U+FEFF (a zero-width character) at character 0"
        );
        let r = check_label("x\u{7}").unwrap_err();
        assert_eq!(r.describe(), "U+0007 (a control character) at character 1");
    }
}
