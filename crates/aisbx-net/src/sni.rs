//! Reading the server name (SNI) out of a TLS ClientHello, with strict bounds: the bytes
//! come from the sandboxed program.

/// Largest ClientHello we wait for (handshake bytes, across records).
pub const MAX_HELLO: usize = 64 * 1024;
/// TLS record payloads are at most 2^14 bytes (RFC 8446 5.1), plus expansion slack.
const MAX_RECORD: usize = (1 << 14) + 2048;

#[derive(Debug, PartialEq, Eq)]
pub enum Peek {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// The first byte is not a TLS handshake record.
    NotTls,
    /// A complete ClientHello; `sni` is its host_name, if it has one.
    Hello { sni: Option<Vec<u8>> },
    /// TLS framing that does not hold a well-formed ClientHello.
    Malformed(&'static str),
}

/// Looks at the first bytes a client sent through a tunnel.
pub fn peek(buf: &[u8]) -> Peek {
    match buf.first() {
        None => return Peek::NeedMore,
        Some(0x16) => {}
        Some(_) => return Peek::NotTls,
    }
    // Reassemble the handshake message from consecutive handshake records.
    let mut hs: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(head) = buf.get(pos..pos + 5) else {
            return Peek::NeedMore;
        };
        if head[0] != 0x16 {
            return Peek::Malformed("a non-handshake record inside the ClientHello");
        }
        if head[1] != 3 {
            return Peek::Malformed("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        if len == 0 || len > MAX_RECORD {
            return Peek::Malformed("a TLS record of impossible length");
        }
        let Some(body) = buf.get(pos + 5..pos + 5 + len) else {
            return Peek::NeedMore;
        };
        hs.extend_from_slice(body);
        pos += 5 + len;
        if hs.len() >= 4 {
            if hs[0] != 1 {
                return Peek::Malformed("the first handshake message is not a ClientHello");
            }
            let want =
                4 + (usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]));
            if want > MAX_HELLO {
                return Peek::Malformed("a ClientHello larger than 64 KiB");
            }
            if hs.len() >= want {
                return match client_hello_sni(&hs[4..want]) {
                    Ok(sni) => Peek::Hello { sni },
                    Err(why) => Peek::Malformed(why),
                };
            }
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.data.len() {
            return Err("a truncated ClientHello");
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<usize, &'static str> {
        Ok(usize::from(self.take(1)?[0]))
    }
    fn u16(&mut self) -> Result<usize, &'static str> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn vec8(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// The host_name in a ClientHello body (after the 4-byte handshake header).
fn client_hello_sni(body: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let mut r = Reader { data: body };
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return Err("a session id longer than 32 bytes");
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("a malformed cipher suite list");
    }
    if r.vec8()?.is_empty() {
        return Err("an empty compression method list");
    }
    if r.data.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut exts = Reader { data: r.vec16()? };
    if !r.data.is_empty() {
        return Err("bytes after the extensions");
    }
    let mut sni = None;
    let mut seen_sni = false;
    while !exts.data.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != 0 {
            continue;
        }
        if seen_sni {
            return Err("two server_name extensions");
        }
        seen_sni = true;
        let mut list = Reader { data };
        let mut names = Reader {
            data: list.vec16()?,
        };
        if !list.data.is_empty() {
            return Err("bytes after the server name list");
        }
        while !names.data.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec16()?;
            if name_type == 0 {
                if sni.is_some() {
                    return Err("two host names in server_name");
                }
                if name.is_empty() {
                    return Err("an empty server name");
                }
                sni = Some(name.to_vec());
            }
        }
    }
    Ok(sni)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal, well-formed TLS 1.2/1.3-style ClientHello record naming `sni` (or none),
    /// with one padding extension of `pad` bytes.
    pub(crate) fn client_hello(sni: Option<&str>, pad: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut entry = vec![0u8];
            entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
            entry.extend_from_slice(name.as_bytes());
            let mut list = (entry.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&entry);
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        // supported_versions: TLS 1.3
        exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        // padding (type 21)
        exts.extend_from_slice(&21u16.to_be_bytes());
        exts.extend_from_slice(&(pad as u16).to_be_bytes());
        exts.extend(std::iter::repeat_n(0u8, pad));
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(32);
        body.extend_from_slice(&[9u8; 32]);
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1u8];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut out = Vec::new();
        for chunk in hs.chunks(1 << 14) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn finds_the_server_name() {
        let hello = client_hello(Some("pypi.org"), 0);
        assert_eq!(
            peek(&hello),
            Peek::Hello {
                sni: Some(b"pypi.org".to_vec())
            }
        );
        assert_eq!(peek(&client_hello(None, 10)), Peek::Hello { sni: None });
    }

    #[test]
    fn waits_for_every_byte_of_a_split_hello() {
        // Spread over two records (padding pushes it past 16 KiB).
        let hello = client_hello(Some("files.example.org"), 20_000);
        assert!(hello.len() > 20_000);
        for cut in [0, 1, 4, 5, 100, 16_000, 16_389, hello.len() - 1] {
            assert_eq!(peek(&hello[..cut]), Peek::NeedMore, "cut at {cut}");
        }
        assert_eq!(
            peek(&hello),
            Peek::Hello {
                sni: Some(b"files.example.org".to_vec())
            }
        );
    }

    #[test]
    fn plain_bytes_are_not_tls() {
        assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
        assert_eq!(peek(b"SSH-2.0-OpenSSH"), Peek::NotTls);
    }

    #[test]
    fn hostile_framing_is_malformed_never_a_panic() {
        let good = client_hello(Some("a.example.org"), 0);
        // Every truncation of the body with a record length that claims the full size
        // either waits or reports malformed; every single-byte corruption is handled.
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = peek(&bad);
            }
        }
        assert!(matches!(
            peek(&[0x16, 0x03, 0x01, 0x00, 0x00]),
            Peek::Malformed(_)
        ));
        assert!(matches!(
            peek(&[0x16, 0x03, 0x01, 0xff, 0xff]),
            Peek::Malformed(_)
        ));
        assert!(matches!(
            peek(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0, 0, 0]),
            Peek::Malformed(_)
        ));
        // A handshake header claiming more than 64 KiB.
        assert!(matches!(
            peek(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff]),
            Peek::Malformed(_)
        ));
        // A body that ends inside the random.
        assert!(matches!(
            peek(&[0x16, 0x03, 0x01, 0x00, 0x06, 0x01, 0, 0, 2, 3, 3]),
            Peek::Malformed(_)
        ));
    }

    #[test]
    fn two_names_are_refused() {
        let mut hello = client_hello(Some("a.example.org"), 0);
        // Duplicate the SNI extension by building a hello with the extension twice.
        let one = client_hello(Some("a.example.org"), 0);
        let ext_start = 5 + 4 + 2 + 32 + 33 + 4 + 2 + 2;
        let ext_len = 2 + 2 + 2 + 1 + 2 + "a.example.org".len();
        let ext = one[ext_start..ext_start + ext_len].to_vec();
        hello.splice(ext_start..ext_start, ext.iter().copied());
        // Fix the three length fields.
        let grow = ext.len();
        let rec = u16::from_be_bytes([hello[3], hello[4]]) as usize + grow;
        hello[3..5].copy_from_slice(&(rec as u16).to_be_bytes());
        let hs = (u32::from_be_bytes([0, hello[6], hello[7], hello[8]]) as usize) + grow;
        hello[6..9].copy_from_slice(&(hs as u32).to_be_bytes()[1..]);
        let exts_at = ext_start - 2;
        let el = u16::from_be_bytes([hello[exts_at], hello[exts_at + 1]]) as usize + grow;
        hello[exts_at..exts_at + 2].copy_from_slice(&(el as u16).to_be_bytes());
        assert_eq!(peek(&hello), Peek::Malformed("two server_name extensions"));
    }
}
