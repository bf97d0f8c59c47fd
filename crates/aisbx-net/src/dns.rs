//! The DNS answerer's wire format: one question in, one answer out, parsed by hand with
//! strict bounds (the query comes from the sandboxed program).
//!
//! Only what a stub resolver sends is accepted: a standard query (opcode 0) with exactly
//! one question whose name is uncompressed. Anything else gets FORMERR or NOTIMP. The
//! answer never carries EDNS (RFC 6891 allows a responder without it).

use std::net::Ipv4Addr;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// TTL of the A records we answer with, seconds.
const TTL: u32 = 30;
/// Largest answer: what a plain UDP client accepts.
const MAX_UDP: usize = 512;
/// Wire size of one A record with a compressed name.
const A_RECORD: usize = 16;

pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const SERVFAIL: u8 = 2;
pub const NXDOMAIN: u8 = 3;
pub const NOTIMP: u8 = 4;
pub const REFUSED: u8 = 5;

/// A parsed query: its id, flags we echo, the question's raw bytes and its name.
#[derive(Debug, PartialEq, Eq)]
pub struct Query<'a> {
    pub id: u16,
    rd: bool,
    /// The question section as sent (name, type, class), echoed in the answer.
    question: &'a [u8],
    /// The name, lower case, without the trailing dot; `None` when it is not a valid
    /// host name (answered NXDOMAIN).
    pub name: Option<String>,
    pub qtype: u16,
    pub qclass: u16,
}

/// What to do with a message that is not an acceptable query.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// Too short to hold a header, or a response: say nothing.
    Drop,
    /// Answer with this rcode and no question.
    Reply { id: u16, rd: bool, rcode: u8 },
}

pub fn parse(msg: &[u8]) -> Result<Query<'_>, Bad> {
    if msg.len() < 12 {
        return Err(Bad::Drop);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 != 0 {
        return Err(Bad::Drop); // a response, not a query
    }
    let rd = flags & 0x0100 != 0;
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 {
        return Err(Bad::Reply {
            id,
            rd,
            rcode: NOTIMP,
        });
    }
    let formerr = Bad::Reply {
        id,
        rd,
        rcode: FORMERR,
    };
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    let nscount = u16::from_be_bytes([msg[8], msg[9]]);
    if qdcount != 1 || ancount != 0 || nscount != 0 {
        return Err(formerr);
    }
    // The name: uncompressed labels, at most 255 bytes on the wire.
    let mut pos = 12;
    let mut labels: Vec<&[u8]> = Vec::new();
    loop {
        let Some(&len) = msg.get(pos) else {
            return Err(formerr);
        };
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return Err(formerr); // compression or extended label types
        }
        let Some(label) = msg.get(pos..pos + usize::from(len)) else {
            return Err(formerr);
        };
        pos += usize::from(len);
        if pos - 12 > 255 {
            return Err(formerr);
        }
        labels.push(label);
    }
    let Some(tail) = msg.get(pos..pos + 4) else {
        return Err(formerr);
    };
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    let question = &msg[12..pos + 4];
    let name = if labels.is_empty() {
        None
    } else {
        let joined: Vec<u8> = labels.join(&b'.');
        std::str::from_utf8(&joined)
            .ok()
            .and_then(crate::rule::normalise_name)
    };
    Ok(Query {
        id,
        rd,
        question,
        name,
        qtype,
        qclass,
    })
}

impl Query<'_> {
    pub fn is_class_in(&self) -> bool {
        self.qclass == CLASS_IN
    }

    /// The answer: the question echoed, `rcode`, and one A record per address, as many
    /// as fit in 512 bytes (the forwarder may relay it over UDP, and the answer carries
    /// no EDNS).
    pub fn answer(&self, rcode: u8, addrs: &[Ipv4Addr]) -> Vec<u8> {
        let room = (MAX_UDP - 12 - self.question.len()) / A_RECORD;
        let count = addrs.len().min(room);
        let mut out = Vec::with_capacity(12 + self.question.len() + 16 * count);
        out.extend_from_slice(&self.id.to_be_bytes());
        // QR=1, opcode 0, AA=0, TC=0, RD echoed, RA=1.
        let flags: u16 = 0x8000 | if self.rd { 0x0100 } else { 0 } | 0x0080 | u16::from(rcode);
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(count as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(self.question);
        for a in &addrs[..count] {
            out.extend_from_slice(&[0xc0, 0x0c]); // the name of the question
            out.extend_from_slice(&TYPE_A.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&TTL.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&a.octets());
        }
        out
    }
}

impl Bad {
    pub fn answer(&self) -> Option<Vec<u8>> {
        match *self {
            Bad::Drop => None,
            Bad::Reply { id, rd, rcode } => {
                let mut out = id.to_be_bytes().to_vec();
                let flags: u16 = 0x8000 | if rd { 0x0100 } else { 0 } | 0x0080 | u16::from(rcode);
                out.extend_from_slice(&flags.to_be_bytes());
                out.extend_from_slice(&[0; 8]);
                Some(out)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query as a stub resolver writes it, with an EDNS OPT record.
    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        // OPT: root name, type 41, udp size 1232, no options.
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        q
    }

    #[test]
    fn parses_a_stub_query_and_answers_it() {
        let msg = query(0xbeef, "Files.Example.ORG", TYPE_A);
        let q = parse(&msg).unwrap();
        assert_eq!(q.id, 0xbeef);
        assert_eq!(q.name.as_deref(), Some("files.example.org"));
        assert_eq!(q.qtype, TYPE_A);
        assert!(q.is_class_in());
        let a = q.answer(
            NOERROR,
            &[Ipv4Addr::new(93, 184, 215, 14), Ipv4Addr::new(1, 2, 3, 4)],
        );
        assert_eq!(&a[..2], &[0xbe, 0xef]);
        assert_eq!(a[2] & 0x80, 0x80, "QR set");
        assert_eq!(a[3] & 0x0f, NOERROR);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 2);
        assert_eq!(&a[a.len() - 4..], &[1, 2, 3, 4]);
        let nx = q.answer(NXDOMAIN, &[]);
        assert_eq!(nx[3] & 0x0f, NXDOMAIN);
        assert_eq!(u16::from_be_bytes([nx[6], nx[7]]), 0);
    }

    #[test]
    fn refuses_what_a_stub_does_not_send() {
        assert_eq!(parse(&[0; 11]), Err(Bad::Drop));
        let mut resp = query(1, "a.org", TYPE_A);
        resp[2] |= 0x80;
        assert_eq!(parse(&resp), Err(Bad::Drop));
        let mut notify = query(1, "a.org", TYPE_A);
        notify[2] |= 4 << 3;
        assert!(matches!(
            parse(&notify),
            Err(Bad::Reply { rcode: NOTIMP, .. })
        ));
        let mut two = query(1, "a.org", TYPE_A);
        two[5] = 2;
        assert!(matches!(
            parse(&two),
            Err(Bad::Reply { rcode: FORMERR, .. })
        ));
        // A compression pointer pointing at itself.
        let mut looped = query(1, "", TYPE_A)[..12].to_vec();
        looped.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert!(matches!(
            parse(&looped),
            Err(Bad::Reply { rcode: FORMERR, .. })
        ));
        // Truncated everywhere.
        let full = query(7, "a.example.org", TYPE_A);
        for cut in 12..full.len() - 11 {
            assert!(parse(&full[..cut]).is_err(), "cut at {cut}");
        }
        // A name longer than 255 bytes.
        let long = format!("{}.org", vec!["a".repeat(63); 5].join("."));
        assert!(matches!(
            parse(&query(1, &long, TYPE_A)),
            Err(Bad::Reply { rcode: FORMERR, .. })
        ));
        let root = query(1, "", TYPE_A);
        assert_eq!(parse(&root).unwrap().name, None);
        let odd = query(1, "a b.org", TYPE_A);
        assert_eq!(parse(&odd).unwrap().name, None);
    }

    #[test]
    fn answers_fit_a_udp_datagram() {
        let long = format!("{}.org", vec!["a".repeat(63); 3].join("."));
        let addrs: Vec<Ipv4Addr> = (0..100).map(|i| Ipv4Addr::new(8, 8, 8, i)).collect();
        for name in ["a.org", long.as_str()] {
            let msg = query(1, name, TYPE_A);
            let a = parse(&msg).unwrap().answer(NOERROR, &addrs);
            assert!(a.len() <= 512, "{name}: {}", a.len());
            let n = u16::from_be_bytes([a[6], a[7]]) as usize;
            assert!(n >= 14, "{name}: only {n} addresses");
            assert_eq!(a.len(), 12 + (msg.len() - 12 - 11) + 16 * n);
        }
    }

    #[test]
    fn every_corruption_is_handled() {
        let full = query(7, "a.example.org", TYPE_AAAA);
        for i in 0..full.len() {
            for v in [0u8, 0x3f, 0x40, 0xc0, 0xff] {
                let mut bad = full.clone();
                bad[i] = v;
                if let Ok(q) = parse(&bad) {
                    let _ = q.answer(REFUSED, &[]);
                } else if let Err(b) = parse(&bad) {
                    let _ = b.answer();
                }
            }
        }
    }
}
