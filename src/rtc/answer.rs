//! What a client's answer must be before webrtc-rs sees it.
//!
//! webrtc-rs 0.17 changes its signaling state before all of its own checks have run, and it
//! accepts answers it cannot live with: a payload type without `a=rtpmap` (static PCMU `0` is
//! legal SDP) or a garbled one leaves it unable to build another offer ("excessive retries in
//! CreateOffer"), so the session could never negotiate again; an m-line answered `inactive`
//! connects and then carries nothing, with no error anywhere. So an answer is held to what this
//! server's offers need, and refused with a reason before the stack is touched. What passes here
//! webrtc-rs applies whole.
//!
//! The rules, m-line by m-line against the outstanding offer (docs/protocol.md states them for
//! client authors):
//! - the same number of m-lines, each of the offered kind and mid;
//! - exactly one direction attribute, which complements the offer's: `recvonly` (the client publishes) is answered
//!   `sendonly` or `sendrecv`, `sendonly` (the client receives) `recvonly` or `sendrecv`, and
//!   `inactive` (a stopped m-line) only `inactive` or with port 0; no live m-line is declined;
//! - every payload type of a live m-line is a number with a well-formed `a=rtpmap`; at least
//!   one was offered there, and those that were keep the offered codec and clock rate;
//! - rids (simulcast) only where the offer asked for them, and only the offered ones;
//! - ICE credentials and a DTLS fingerprint, at session or media level.

use webrtc::sdp::description::media::MediaDescription;
use webrtc::sdp::description::session::SessionDescription;

const DIRECTIONS: [&str; 4] = ["sendrecv", "sendonly", "recvonly", "inactive"];

/// Checks `answer` against the `offer` it answers; the error says what is wrong, for the client.
pub fn check_answer(offer: &str, answer: &str) -> Result<(), String> {
    let parse = |text: &str| SessionDescription::unmarshal(&mut std::io::Cursor::new(text));
    let offer = parse(offer).map_err(|e| format!("our own offer does not parse: {e}"))?;
    let answer = parse(answer).map_err(|e| format!("not a valid SDP: {e}"))?;
    if answer.media_descriptions.len() != offer.media_descriptions.len() {
        return Err(format!(
            "the answer has {} m-lines, the offer {}",
            answer.media_descriptions.len(),
            offer.media_descriptions.len()
        ));
    }
    for (i, (o, a)) in offer
        .media_descriptions
        .iter()
        .zip(&answer.media_descriptions)
        .enumerate()
    {
        check_media(i, o, a)?;
    }
    let has = |key: &str| {
        answer.attribute(key).is_some()
            || answer
                .media_descriptions
                .iter()
                .all(|m| m.attribute(key).flatten().is_some())
    };
    for key in ["ice-ufrag", "ice-pwd", "fingerprint"] {
        if !has(key) {
            return Err(format!("the answer has no a={key}"));
        }
    }
    Ok(())
}

fn check_media(i: usize, o: &MediaDescription, a: &MediaDescription) -> Result<(), String> {
    if a.media_name.media != o.media_name.media {
        return Err(format!(
            "m-line {i} is {:?}, offered {:?}",
            a.media_name.media, o.media_name.media
        ));
    }
    let mid = |m: &MediaDescription| m.attribute("mid").flatten().map(str::to_owned);
    if mid(a) != mid(o) {
        return Err(format!(
            "m-line {i} has mid {:?}, offered {:?}",
            mid(a),
            mid(o)
        ));
    }
    let offered = direction(o)?;
    let answered = direction(a)?;
    let declined = a.media_name.port.value == 0;
    let allowed: &[&str] = match offered {
        "recvonly" => &["sendonly", "sendrecv"],
        "sendonly" => &["recvonly", "sendrecv"],
        "inactive" => &["inactive"],
        // Plaza never offers sendrecv; if it did, any answer direction would be legal.
        _ => &DIRECTIONS,
    };
    if offered == "inactive" && (declined || answered == "inactive") {
        return Ok(()); // a stopped m-line: its codecs no longer matter
    }
    if declined || !allowed.contains(&answered) {
        let what = if declined {
            "declined (port 0)".to_owned()
        } else {
            format!("answered {answered}")
        };
        return Err(format!(
            "m-line {i} (mid {}) was offered {offered} and {what}; it must be {}",
            mid(o).unwrap_or_default(),
            allowed.join(" or ")
        ));
    }
    let rids: Vec<&str> = a
        .attributes
        .iter()
        .filter(|x| x.key == "rid")
        .map(|x| x.value.as_deref().unwrap_or(""))
        .collect();
    let simulcast_offered = o.has_attribute("simulcast");
    super::simulcast::check_answered_rids(simulcast_offered, &rids)
        .map_err(|e| format!("m-line {i} (mid {}): {e}", mid(o).unwrap_or_default()))?;
    check_codecs(i, o, a)
}

/// The m-line's one direction attribute. RFC 4566 reads none as `sendrecv`, but webrtc-rs 0.17
/// reads it as no direction at all and then builds its next offer with the m-lines reordered
/// (found by fuzzing: a browser refuses such an offer), so an answer must name its direction.
fn direction(m: &MediaDescription) -> Result<&'static str, String> {
    let found: Vec<&'static str> = DIRECTIONS
        .into_iter()
        .filter(|d| m.has_attribute(d))
        .collect();
    match found[..] {
        [one] => Ok(one),
        [] => Err(format!(
            "an m-line (mid {}) has no direction attribute: {}",
            m.attribute("mid").flatten().unwrap_or_default(),
            DIRECTIONS.join(", ")
        )),
        _ => Err(format!(
            "an m-line has several directions: {}",
            found.join(", ")
        )),
    }
}

/// Every answered payload type is a number with a well-formed `a=rtpmap`; those that were offered
/// keep their codec; and at least one of them was offered. Others are legal (an answerer may
/// list what else it can receive) and webrtc-rs ignores them.
fn check_codecs(i: usize, o: &MediaDescription, a: &MediaDescription) -> Result<(), String> {
    let mut common = 0;
    for pt in &a.media_name.formats {
        if !pt.parse::<u8>().is_ok_and(|n| n < 128) {
            return Err(format!(
                "m-line {i} lists payload type {pt:?}: not a number from 0 to 127"
            ));
        }
        let Some(answered) = rtpmap(a, pt).filter(|m| well_formed(m)) else {
            return Err(format!(
                "m-line {i} has no well-formed a=rtpmap for payload type {pt} \
                 (every payload type needs one: encoding/clock rate[/channels])"
            ));
        };
        if !o.media_name.formats.contains(pt) {
            continue;
        }
        let offered = rtpmap(o, pt).unwrap_or_default();
        if !same_codec(&answered, &offered) {
            return Err(format!(
                "m-line {i} maps payload type {pt} to {answered:?}, offered as {offered:?}"
            ));
        }
        common += 1;
    }
    if common == 0 {
        return Err(format!(
            "m-line {i} answers none of the offered payload types ({})",
            o.media_name.formats.join(" ")
        ));
    }
    Ok(())
}

/// `encoding/clock[/channels]`: a token, a clock rate and an optional channel count.
fn well_formed(rtpmap: &str) -> bool {
    let mut parts = rtpmap.split('/');
    let name_ok = parts.next().is_some_and(|n| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    });
    let clock_ok = parts
        .next()
        .is_some_and(|c| c.parse::<u32>().is_ok_and(|c| c > 0));
    let channels_ok = parts
        .next()
        .is_none_or(|c| c.parse::<u8>().is_ok_and(|c| c > 0));
    name_ok && clock_ok && channels_ok && parts.next().is_none()
}

/// The `encoding/clock[/channels]` of an `a=rtpmap:<pt> ...` line for `pt`.
fn rtpmap(m: &MediaDescription, pt: &str) -> Option<String> {
    m.attributes
        .iter()
        .filter(|attr| attr.key == "rtpmap")
        .filter_map(|attr| attr.value.as_deref())
        .find_map(|v| {
            let (number, codec) = v.split_once(' ')?;
            (number == pt).then(|| codec.trim().to_owned())
        })
}

/// Codec names compare without case (RFC 4855 3); the channel count of audio defaults to 1.
fn same_codec(answered: &str, offered: &str) -> bool {
    let parts = |s: &str| -> Vec<String> {
        let mut p: Vec<String> = s
            .split('/')
            .map(|x| x.trim().to_ascii_lowercase())
            .collect();
        if p.len() == 3 && p[2] == "1" {
            p.pop();
        }
        p
    };
    !offered.is_empty() && parts(answered) == parts(offered)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=fingerprint:sha-256 AA:BB\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\n";

    fn sdp(mlines: &[(&str, &str, &str, &str)]) -> String {
        let mut s = SESSION.to_owned();
        for (kind, mid, direction, codecs) in mlines {
            let (pts, maps): (Vec<&str>, Vec<String>) = codecs
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| {
                    let (pt, map) = c.split_once('=').unwrap_or((c, ""));
                    let line = if map.is_empty() {
                        String::new()
                    } else {
                        format!("a=rtpmap:{pt} {map}\r\n")
                    };
                    (pt, line)
                })
                .unzip();
            s += &format!(
                "m={kind} 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na={direction}\r\n{}",
                pts.join(" "),
                maps.concat()
            );
        }
        s
    }

    fn offer() -> String {
        sdp(&[
            ("audio", "0", "recvonly", "111=opus/48000/2,0=PCMU/8000"),
            ("video", "1", "sendonly", "96=VP8/90000"),
            ("video", "2", "inactive", "96=VP8/90000"),
        ])
    }

    fn answer_with(m0: (&str, &str), m1: (&str, &str), m2: (&str, &str)) -> String {
        sdp(&[
            ("audio", "0", m0.0, m0.1),
            ("video", "1", m1.0, m1.1),
            ("video", "2", m2.0, m2.1),
        ])
    }

    #[test]
    fn a_browser_like_answer_passes() {
        let answer = answer_with(
            ("sendonly", "111=OPUS/48000/2"),
            ("recvonly", "96=VP8/90000"),
            ("inactive", "96=VP8/90000"),
        );
        assert_eq!(check_answer(&offer(), &answer), Ok(()));
    }

    #[test]
    fn payload_types_without_rtpmap_or_not_offered_or_remapped_are_refused() {
        let offer = offer();
        for (m0, why) in [
            (
                "111=opus/48000/2,0",
                "no well-formed a=rtpmap for payload type 0",
            ),
            ("111=opus", "no well-formed a=rtpmap for payload type 111"),
            (
                "111=opus/x/2",
                "no well-formed a=rtpmap for payload type 111",
            ),
            ("111=VP8/90000", "maps payload type 111"),
            ("8=PCMA/8000", "none of the offered"),
            ("111x=opus/48000/2", "not a number"),
            ("300=opus/48000/2", "not a number"),
        ] {
            let answer = answer_with(
                ("sendonly", m0),
                ("recvonly", "96=VP8/90000"),
                ("inactive", "96=VP8/90000"),
            );
            let e = check_answer(&offer, &answer).expect_err(m0);
            assert!(e.contains(why), "{m0}: {e}");
        }
    }

    #[test]
    fn an_answer_may_list_more_codecs_than_offered() {
        let answer = answer_with(
            ("sendonly", "111=opus/48000/2,9=G722/8000,8=PCMA/8000"),
            ("recvonly", "96=VP8/90000,98=VP9/90000"),
            ("inactive", "96=VP8/90000"),
        );
        assert_eq!(check_answer(&offer(), &answer), Ok(()));
    }

    #[test]
    fn an_answer_must_name_each_direction() {
        let answer = answer_with(
            ("sendonly", "111=opus/48000/2"),
            ("recvonly", "96=VP8/90000"),
            ("inactive", "96=VP8/90000"),
        )
        .replacen("a=sendonly\r\n", "a=sendonlyW\r\n", 1);
        let e = check_answer(&offer(), &answer).expect_err("no direction");
        assert!(e.contains("no direction attribute"), "{e}");
    }

    #[test]
    fn directions_must_complement_the_offer() {
        let offer = offer();
        let refused = [
            answer_with(
                ("inactive", "111=opus/48000/2"),
                ("recvonly", "96=VP8/90000"),
                ("inactive", "96=VP8/90000"),
            ),
            answer_with(
                ("sendonly", "111=opus/48000/2"),
                ("inactive", "96=VP8/90000"),
                ("inactive", "96=VP8/90000"),
            ),
            answer_with(
                ("recvonly", "111=opus/48000/2"),
                ("recvonly", "96=VP8/90000"),
                ("inactive", "96=VP8/90000"),
            ),
            answer_with(
                ("sendonly", "111=opus/48000/2"),
                ("recvonly", "96=VP8/90000"),
                ("recvonly", "96=VP8/90000"),
            ),
        ];
        for answer in refused {
            let e = check_answer(&offer, &answer).expect_err(&answer);
            assert!(e.contains("it must be"), "{e}");
        }
        let sendrecv = answer_with(
            ("sendrecv", "111=opus/48000/2"),
            ("sendrecv", "96=VP8/90000"),
            ("inactive", "96=VP8/90000"),
        );
        assert_eq!(check_answer(&offer, &sendrecv), Ok(()));
        let declined = answer_with(
            ("sendonly", "111=opus/48000/2"),
            ("recvonly", "96=VP8/90000"),
            ("inactive", "96=VP8/90000"),
        )
        .replacen("m=video 9", "m=video 0", 1);
        let e = check_answer(&offer, &declined).expect_err("declined");
        assert!(e.contains("declined"), "{e}");
    }
}
