//! Address classes the proxy refuses to dial unless an IP rule names the address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why `ip` is not a public unicast address, or `None` when it is. IPv4-mapped and
/// IPv4-compatible IPv6 addresses are always refused (a name has no business resolving
/// to one); NAT64 (64:ff9b::/96) and 6to4 (2002::/16) forms are judged by the IPv4
/// address they carry; local-use NAT64 (64:ff9b:1::/48) is refused.
///
/// The documentation (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)
/// and benchmarking (198.18.0.0/15) ranges are NOT refused: they reach nothing inside
/// a network unless the network itself routes them, and networks whose resolvers
/// answer with them on purpose (fake-IP DNS, egress gateways) must keep working.
pub fn refused_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => v4_class(a),
        IpAddr::V6(a) => v6_class(a),
    }
}

fn v4_class(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    let class = match o {
        [0, ..] => "unspecified or 'this network' (0.0.0.0/8)",
        [127, ..] => "loopback",
        [10, ..] => "private (10.0.0.0/8)",
        [172, b, ..] if (16..32).contains(&b) => "private (172.16.0.0/12)",
        [192, 168, ..] => "private (192.168.0.0/16)",
        [169, 254, 169, 254] => "cloud metadata (169.254.169.254)",
        [169, 254, ..] => "link-local (169.254.0.0/16)",
        [100, b, ..] if (64..128).contains(&b) => "shared/CGNAT (100.64.0.0/10)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
        [255, 255, 255, 255] => "broadcast",
        [a0, ..] if (224..240).contains(&a0) => "multicast",
        [a0, ..] if a0 >= 240 => "reserved (240.0.0.0/4)",
        _ => return None,
    };
    Some(class)
}

fn v6_class(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    if a.is_unspecified() {
        return Some("unspecified");
    }
    if a.is_loopback() {
        return Some("loopback");
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return Some(v4_class(v4).unwrap_or("IPv4-compatible or IPv4-mapped"));
    }
    // NAT64: the well-known prefix carries the IPv4 address the gateway would dial;
    // the local-use prefix is a site's own translator.
    if s[0] == 0x64 && s[1] == 0xff9b {
        if s[2..6] == [0; 4] {
            let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            return v4_class(v4);
        }
        if s[2] == 1 {
            return Some("local-use NAT64 (64:ff9b:1::/48)");
        }
    }
    // 6to4 carries an IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return v4_class(v4);
    }
    let class = match s[0] {
        x if x & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        x if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        x if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x0100 if s[1..4] == [0; 3] => "discard-only (100::/64)",
        _ => return None,
    };
    Some(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<&'static str> {
        refused_class(s.parse().unwrap())
    }

    #[test]
    fn refuses_every_non_public_class() {
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.100.100.200",
            "100.127.255.255",
            "192.0.0.170",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "100::1",
        ] {
            assert!(class(a).is_some(), "{a} must be refused");
        }
        assert_eq!(
            class("169.254.169.254"),
            Some("cloud metadata (169.254.169.254)")
        );
        assert_eq!(class("::ffff:127.0.0.1"), Some("loopback"));
    }

    #[test]
    fn accepts_public_unicast() {
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "151.101.0.223",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.167.1.1",
            "198.17.1.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a04:4e42::223",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:db9::1",
            // Used by fake-IP resolvers and egress gateways.
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.80",
            "198.18.0.1",
            "198.19.255.255",
            "2001:db8::1",
        ] {
            assert_eq!(class(a), None, "{a} is public");
        }
    }
}
