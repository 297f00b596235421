//! Simulcast on the receiving side: what the offer must ask for, what an answer may say back,
//! and which spatial layer a stream is.
//!
//! webrtc-rs 0.17 never asks for simulcast in an offer it makes (it writes no `a=rid … recv`
//! and no `a=simulcast:recv`), so the offer text sent to a client is amended for the m-lines
//! where the client asked to publish simulcast. A browser then answers `a=simulcast:send` with
//! the same rids, and webrtc-rs (reading the rids from the answer) reports each one as its own
//! track. The rids are fixed and ordered from the smallest layer up: `q` (quarter), `h` (half),
//! `f` (full); docs/protocol.md tells clients so.

/// The rids Plaza offers, lowest spatial layer first; a stream's layer is its index here.
pub const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];

/// The spatial layer of a stream with this rid: 0 for a single-encoding stream (no rid).
/// `None` for a rid Plaza never offered.
pub fn layer_of_rid(rid: &str) -> Option<u8> {
    if rid.is_empty() {
        return Some(0);
    }
    SIMULCAST_RIDS
        .iter()
        .position(|r| *r == rid)
        .map(|i| i as u8)
}

/// Adds the simulcast receive attributes to the m-sections of `offer` whose mid is in `mids`,
/// unless a section has them already (webrtc-rs writes them itself in offers made after an
/// answer that sent simulcast, echoing that answer's rids; a second copy is a parse error).
pub fn ask_for_simulcast(offer: &str, mids: &[String]) -> String {
    if mids.is_empty() {
        return offer.to_owned();
    }
    let mut out = String::with_capacity(offer.len() + mids.len() * 96);
    // Each m-section (and the session part before the first) whole, then amended if needed.
    let mut section = String::new();
    for line in offer.split_inclusive('\n') {
        if line.starts_with("m=") {
            finish_section(&mut out, &section, mids);
            section.clear();
        }
        section.push_str(line);
    }
    finish_section(&mut out, &section, mids);
    out
}

fn finish_section(out: &mut String, section: &str, mids: &[String]) {
    out.push_str(section);
    let lines = || section.lines().map(|l| l.trim_end_matches('\r'));
    let named = lines()
        .filter_map(|l| l.strip_prefix("a=mid:"))
        .any(|mid| mids.iter().any(|m| m == mid));
    let asks_already = lines().any(|l| l.starts_with("a=simulcast:") || l.starts_with("a=rid:"));
    if named && !asks_already {
        push_simulcast_lines(out);
    }
}

fn push_simulcast_lines(out: &mut String) {
    for rid in SIMULCAST_RIDS {
        out.push_str("a=rid:");
        out.push_str(rid);
        out.push_str(" recv\r\n");
    }
    out.push_str("a=simulcast:recv ");
    out.push_str(&SIMULCAST_RIDS.join(";"));
    out.push_str("\r\n");
}

/// What one answered m-line may say about simulcast, given whether the offer asked for it
/// there: rids only where they were offered, only the offered ones, each sent (`send`).
pub fn check_answered_rids(offered: bool, rid_values: &[&str]) -> Result<(), String> {
    if rid_values.is_empty() {
        return Ok(()); // a single encoding is always acceptable
    }
    if !offered {
        return Err("simulcast (a=rid) answered on an m-line that did not offer it".into());
    }
    if rid_values.len() > SIMULCAST_RIDS.len() {
        return Err(format!(
            "{} rids answered, at most {} were offered",
            rid_values.len(),
            SIMULCAST_RIDS.len()
        ));
    }
    for value in rid_values {
        let mut words = value.split_whitespace();
        let (Some(id), Some(direction)) = (words.next(), words.next()) else {
            return Err(format!("a=rid:{value} is not `a=rid:<id> send`"));
        };
        if !SIMULCAST_RIDS.contains(&id) {
            return Err(format!("a=rid:{id} was not offered"));
        }
        if direction != "send" {
            return Err(format!("a=rid:{id} must be `send`, is `{direction}`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=sendonly\r\n";

    #[test]
    fn only_the_named_m_lines_ask_for_simulcast() {
        let munged = ask_for_simulcast(OFFER, &["1".to_owned()]);
        let sections: Vec<&str> = munged.split("m=").collect();
        assert!(!sections[1].contains("a=rid"), "audio untouched");
        assert!(sections[2].ends_with(
            "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n"
        ));
        assert!(!sections[3].contains("a=rid"), "other video untouched");
    }

    #[test]
    fn the_last_m_line_can_ask_too() {
        let munged = ask_for_simulcast(OFFER, &["2".to_owned()]);
        assert!(munged.ends_with("a=simulcast:recv q;h;f\r\n"));
        assert_eq!(munged.matches("a=simulcast").count(), 1);
        assert_eq!(ask_for_simulcast(OFFER, &[]), OFFER);
    }

    #[test]
    fn the_amended_offer_still_parses() {
        use webrtc::sdp::description::session::SessionDescription;
        let munged = ask_for_simulcast(OFFER, &["1".to_owned()]);
        let parsed = SessionDescription::unmarshal(&mut std::io::Cursor::new(munged)).unwrap();
        let rids: Vec<_> = parsed.media_descriptions[1]
            .attributes
            .iter()
            .filter(|a| a.key == "rid")
            .collect();
        assert_eq!(rids.len(), 3);
    }

    #[test]
    fn a_section_that_asks_already_is_left_alone() {
        let asked = OFFER.replace(
            "a=mid:1\r\na=recvonly\r\n",
            "a=mid:1\r\na=recvonly\r\na=rid:q recv\r\na=simulcast:recv q\r\n",
        );
        let munged = ask_for_simulcast(&asked, &["1".to_owned()]);
        assert_eq!(munged, asked);
    }

    #[test]
    fn rids_map_to_layers() {
        assert_eq!(layer_of_rid(""), Some(0));
        assert_eq!(layer_of_rid("q"), Some(0));
        assert_eq!(layer_of_rid("h"), Some(1));
        assert_eq!(layer_of_rid("f"), Some(2));
        assert_eq!(layer_of_rid("x"), None);
    }

    #[test]
    fn answered_rids_must_be_offered_and_sent() {
        assert!(check_answered_rids(false, &[]).is_ok());
        assert!(check_answered_rids(true, &[]).is_ok());
        assert!(check_answered_rids(true, &["q send", "h send", "f send"]).is_ok());
        assert!(check_answered_rids(false, &["q send"]).is_err());
        assert!(check_answered_rids(true, &["z send"]).is_err());
        assert!(check_answered_rids(true, &["q recv"]).is_err());
        assert!(check_answered_rids(true, &["q"]).is_err());
        assert!(check_answered_rids(true, &["q send"; 4]).is_err());
    }
}
