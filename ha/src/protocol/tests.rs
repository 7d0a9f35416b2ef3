use portcullis_common::{FlowKey, FlowValue, NatKey, NatValue};
use proptest::prelude::*;

use super::codec::FLOW_LEN;
use super::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| name.to_string()).collect()
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        sender: "gw-a".into(),
        role: Role::Gateway,
        seq: 7,
        ready: true,
        claims: names(&["egress-1", "egress-2"]),
        view: vec![PeerView {
            member: "gw-b".into(),
            age_ms: 120,
            ready: false,
            claims: vec![],
        }],
    }
}

fn flow(port: u16) -> Replica {
    Replica::Flow {
        key: FlowKey {
            addr_lo: [1; 16],
            addr_hi: [2; 16],
            port_lo: port.to_be(),
            port_hi: 443u16.to_be(),
            protocol: 6,
            _pad: [0; 3],
        },
        value: FlowValue {
            last_seen_ns: 0,
            group: 0x0102_0304,
            state: 2,
            initiator_is_lo: 1,
            checked: 3,
            generation: 1,
        },
        confirmed: true,
        idle_ns: 5_000_000,
    }
}

fn translation() -> Replica {
    Replica::Translation {
        key: NatKey {
            src: [3; 16],
            dst: [4; 16],
            sport: 40000u16.to_be(),
            dport: 53u16.to_be(),
            protocol: 17,
            direction: 1,
            _pad: [0; 2],
        },
        value: NatValue {
            addr: [5; 16],
            created_ns: 0,
            port: 1024u16.to_be(),
            _pad: [0; 6],
        },
        age_ns: 9,
    }
}

fn frames() -> Vec<Frame> {
    vec![
        Frame::Hello {
            version: VERSION,
            sender: "gw-a".into(),
            group_hash: 0xdead_beef,
        },
        Frame::Entries(vec![flow(1), translation(), flow(2)]),
        Frame::Entries(vec![]),
        Frame::DumpEnd { entries: 3 },
        Frame::Keepalive,
    ]
}

fn stream(frames: &[Frame]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|frame| encode_frame(frame).unwrap())
        .collect()
}

/// Feeds `bytes` in the given pieces and collects the frames (or the first error).
fn decode_pieces<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<Frame>, ProtocolError> {
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    for piece in pieces {
        decoder.feed(piece);
        while let Some(frame) = decoder.next_frame()? {
            out.push(frame);
        }
    }
    Ok(out)
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
    decode_pieces([bytes])
}

#[test]
fn heartbeat_round_trip() {
    let hb = heartbeat();
    let bytes = encode_heartbeat(&hb).unwrap();
    assert_eq!(bytes.len(), heartbeat_len(&hb));
    assert_eq!(&bytes[..4], b"PCHA");
    assert_eq!(decode_heartbeat(&bytes).unwrap(), hb);
}

#[test]
fn heartbeat_of_another_version_is_refused() {
    let mut bytes = encode_heartbeat(&heartbeat()).unwrap();
    bytes[4..6].copy_from_slice(&2u16.to_be_bytes());
    let error = decode_heartbeat(&bytes).unwrap_err();
    assert_eq!(error, ProtocolError::Version { got: 2, want: 1 });
    assert_eq!(error.reason(), "version");
}

#[test]
fn heartbeat_errors() {
    let good = encode_heartbeat(&heartbeat()).unwrap();
    let reason = |bytes: &[u8]| decode_heartbeat(bytes).unwrap_err().reason();

    assert_eq!(reason(b"XCHA\0\x01"), "magic");
    assert_eq!(reason(b"PC"), "truncated");
    for cut in 0..good.len() {
        assert_eq!(reason(&good[..cut]), "truncated", "cut at {cut}");
    }
    assert_eq!(reason(&[good.as_slice(), &[0]].concat()), "trailing");
    assert_eq!(reason(&[0; MAX_DATAGRAM + 1]), "too-large");

    // The sender's name is at offset 6: length 4, "gw-a".
    let mut bad = good.clone();
    bad[7] = 0xff;
    assert_eq!(reason(&bad), "utf8");
    let mut bad = good.clone();
    bad[6] = 0;
    assert_eq!(reason(&bad), "value");
    let mut bad = good.clone();
    bad[6] = 254;
    assert_eq!(reason(&bad), "limit");
    // Role after the name, then seq, then ready.
    let mut bad = good.clone();
    bad[11] = 9;
    assert_eq!(
        decode_heartbeat(&bad).unwrap_err(),
        ProtocolError::Value {
            field: "role",
            got: 9
        }
    );
    let mut bad = good.clone();
    bad[20] = 2;
    assert_eq!(reason(&bad), "value");
    // The claim count.
    let mut bad = good;
    bad[21] = 65;
    assert_eq!(reason(&bad), "limit");
}

#[test]
fn heartbeat_encoding_limits() {
    let reason = |hb: &Heartbeat| encode_heartbeat(hb).unwrap_err().reason();
    let mut hb = heartbeat();
    hb.sender = "x".repeat(MAX_NAME + 1);
    assert_eq!(reason(&hb), "limit");
    hb.sender = String::new();
    assert_eq!(reason(&hb), "value");
    let mut hb = heartbeat();
    hb.claims = (0..=MAX_CLAIMS).map(|i| i.to_string()).collect();
    assert_eq!(reason(&hb), "limit");
    let mut hb = heartbeat();
    hb.view = vec![heartbeat().view[0].clone(); MAX_VIEW + 1];
    assert_eq!(reason(&hb), "limit");
    let mut hb = heartbeat();
    hb.claims = (0..20).map(|i| format!("{i:0>100}")).collect();
    assert_eq!(
        encode_heartbeat(&hb).unwrap_err(),
        ProtocolError::TooLarge {
            len: heartbeat_len(&hb),
            max: MAX_DATAGRAM
        }
    );
}

#[test]
fn frames_round_trip_and_omit_the_senders_clock() {
    let mut with_clock = flow(1);
    if let Replica::Flow { value, .. } = &mut with_clock {
        value.last_seen_ns = 123;
    }
    let bytes = encode_frame(&Frame::Entries(vec![with_clock, translation()])).unwrap();
    assert_eq!(bytes.len(), FRAME_HEADER + 4 + FLOW_LEN + 65);
    assert_eq!(
        decode_all(&bytes).unwrap(),
        vec![Frame::Entries(vec![flow(1), translation()])]
    );
    let all = frames();
    assert_eq!(decode_all(&stream(&all)).unwrap(), all);
}

#[test]
fn ports_stay_in_network_byte_order() {
    let bytes = encode_frame(&Frame::Entries(vec![flow(0x1234)])).unwrap();
    // Header, count, tag, two addresses: then port_lo as it is on the wire.
    let at = FRAME_HEADER + 4 + 1 + 32;
    assert_eq!(bytes[at..at + 2], [0x12, 0x34]);
}

#[test]
fn a_frame_split_at_every_byte_boundary_decodes_the_same() {
    let all = frames();
    let bytes = stream(&all);
    for cut in 0..=bytes.len() {
        let (head, tail) = bytes.split_at(cut);
        assert_eq!(decode_pieces([head, tail]).unwrap(), all, "cut at {cut}");
    }
    assert_eq!(decode_pieces(bytes.chunks(1)).unwrap(), all);
}

#[test]
fn many_entries_become_several_frames() {
    let entries: Vec<Replica> = (0..MAX_ENTRIES_PER_FRAME + 5)
        .map(|i| flow(i as u16))
        .collect();
    let decoded = decode_all(&encode_entries(&entries)).unwrap();
    assert_eq!(decoded.len(), 2);
    let joined: Vec<Replica> = decoded
        .into_iter()
        .flat_map(|frame| match frame {
            Frame::Entries(entries) => entries,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(joined, entries);
    assert!(encode_entries(&[]).is_empty());
    assert_eq!(
        encode_frame(&Frame::Entries(entries)).unwrap_err().reason(),
        "limit"
    );
}

/// A frame header with the given type and payload length, and the payload.
fn raw_frame(version: u16, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&version.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn frame_errors() {
    let reason = |bytes: &[u8]| decode_all(bytes).unwrap_err().reason();
    // Refused as soon as the first wrong byte is in, without waiting for a whole header.
    assert_eq!(reason(b"X"), "magic");
    assert_eq!(reason(b"PCHA\0\x02"), "version");
    assert_eq!(reason(b"PCHA\0\x01\x09"), "type");
    assert_eq!(reason(b"PCHA\0\x01\x02\xff\xff\xff\xff"), "too-large");

    assert_eq!(
        decode_all(&raw_frame(0, TYPE_KEEPALIVE, &[])).unwrap_err(),
        ProtocolError::Version { got: 0, want: 1 }
    );
    assert_eq!(reason(&raw_frame(1, TYPE_KEEPALIVE, &[0])), "trailing");
    assert_eq!(reason(&raw_frame(1, TYPE_DUMP_END, &[0; 7])), "truncated");
    assert_eq!(
        reason(&raw_frame(
            1,
            TYPE_HELLO,
            &[0, 1, 2, 0xc3, 0x28, 0, 0, 0, 0, 0, 0, 0, 0]
        )),
        "utf8"
    );
    // An entry count the payload cannot hold, and one over the limit.
    assert_eq!(
        reason(&raw_frame(1, TYPE_ENTRIES, &[0, 0, 0, 1])),
        "truncated"
    );
    let over = (MAX_ENTRIES_PER_FRAME as u32 + 1).to_be_bytes();
    assert_eq!(reason(&raw_frame(1, TYPE_ENTRIES, &over)), "limit");
    let mut bad_kind = encode_frame(&Frame::Entries(vec![flow(1)])).unwrap();
    bad_kind[FRAME_HEADER + 4] = 7;
    assert_eq!(reason(&bad_kind), "value");
    // A garbled payload length: the frame ends inside the next one, which is then garbage.
    let mut garbled = stream(&frames());
    garbled[PREAMBLE + 1..FRAME_HEADER].copy_from_slice(&3u32.to_be_bytes());
    assert!(decode_all(&garbled).is_err());
}

#[test]
fn a_failed_decoder_stays_failed() {
    let mut decoder = FrameDecoder::new();
    decoder.feed(b"JUNK");
    assert_eq!(decoder.next_frame(), Err(ProtocolError::Magic));
    decoder.feed(&encode_frame(&Frame::Keepalive).unwrap());
    assert_eq!(decoder.next_frame(), Err(ProtocolError::Magic));
}

#[test]
fn reasons_are_distinct_labels() {
    let errors = [
        ProtocolError::Magic,
        ProtocolError::Version { got: 0, want: 1 },
        ProtocolError::Truncated,
        ProtocolError::TooLarge { len: 0, max: 0 },
        ProtocolError::Utf8,
        ProtocolError::Type(0),
        ProtocolError::Value { field: "", got: 0 },
        ProtocolError::Limit {
            what: "",
            got: 0,
            max: 0,
        },
        ProtocolError::Trailing(0),
    ];
    let reasons: std::collections::BTreeSet<_> = errors.iter().map(|e| e.reason()).collect();
    assert_eq!(reasons.len(), errors.len());
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9.-]{1,24}", "\\PC{1,8}"]
}

fn peer_view() -> impl Strategy<Value = PeerView> {
    (
        name(),
        any::<u32>(),
        any::<bool>(),
        prop::collection::vec(name(), 0..4),
    )
        .prop_map(|(member, age_ms, ready, claims)| PeerView {
            member,
            age_ms,
            ready,
            claims,
        })
}

fn arb_heartbeat() -> impl Strategy<Value = Heartbeat> {
    (
        name(),
        prop_oneof![Just(Role::Gateway), Just(Role::Node)],
        any::<u64>(),
        any::<bool>(),
        prop::collection::vec(name(), 0..6),
        prop::collection::vec(peer_view(), 0..5),
    )
        .prop_map(|(sender, role, seq, ready, claims, view)| Heartbeat {
            sender,
            role,
            seq,
            ready,
            claims,
            view,
        })
}

fn arb_replica() -> impl Strategy<Value = Replica> {
    let flow = (
        (any::<[u8; 16]>(), any::<[u8; 16]>(), any::<[u16; 2]>()),
        (any::<u8>(), any::<u32>(), any::<[u8; 4]>()),
        (any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |((lo, hi, ports), (protocol, group, bytes), (confirmed, idle_ns))| Replica::Flow {
                key: FlowKey {
                    addr_lo: lo,
                    addr_hi: hi,
                    port_lo: ports[0],
                    port_hi: ports[1],
                    protocol,
                    _pad: [0; 3],
                },
                value: FlowValue {
                    last_seen_ns: 0,
                    group,
                    state: bytes[0],
                    initiator_is_lo: bytes[1],
                    checked: bytes[2],
                    generation: bytes[3],
                },
                confirmed,
                idle_ns,
            },
        );
    let translation = (
        (any::<[u8; 16]>(), any::<[u8; 16]>(), any::<[u16; 3]>()),
        (any::<[u8; 2]>(), any::<[u8; 16]>(), any::<u64>()),
    )
        .prop_map(
            |((src, dst, ports), (bytes, addr, age_ns))| Replica::Translation {
                key: NatKey {
                    src,
                    dst,
                    sport: ports[0],
                    dport: ports[1],
                    protocol: bytes[0],
                    direction: bytes[1],
                    _pad: [0; 2],
                },
                value: NatValue {
                    addr,
                    created_ns: 0,
                    port: ports[2],
                    _pad: [0; 6],
                },
                age_ns,
            },
        );
    prop_oneof![flow, translation]
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), name(), any::<u64>()).prop_map(|(version, sender, group_hash)| {
            Frame::Hello {
                version,
                sender,
                group_hash,
            }
        }),
        prop::collection::vec(arb_replica(), 0..8).prop_map(Frame::Entries),
        any::<u64>().prop_map(|entries| Frame::DumpEnd { entries }),
        Just(Frame::Keepalive),
    ]
}

proptest! {
    #[test]
    fn any_heartbeat_round_trips_or_is_refused_by_size(hb in arb_heartbeat()) {
        match encode_heartbeat(&hb) {
            Ok(bytes) => prop_assert_eq!(decode_heartbeat(&bytes).unwrap(), hb),
            Err(error) => prop_assert_eq!(error.reason(), "too-large"),
        }
    }

    #[test]
    fn any_frames_round_trip_in_any_pieces(
        frames in prop::collection::vec(arb_frame(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let bytes = stream(&frames);
        let mut bounds: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
        bounds.extend([0, bytes.len()]);
        bounds.sort_unstable();
        let pieces = bounds.windows(2).map(|w| &bytes[w[0]..w[1]]);
        prop_assert_eq!(decode_pieces(pieces).unwrap(), frames);
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode_heartbeat(&bytes);
        let _ = decode_all(&bytes);
        // Past the preamble, so that the garbage reaches the payload decoders.
        let _ = decode_heartbeat(&[&MAGIC[..], &VERSION.to_be_bytes(), &bytes].concat());
        for kind in TYPE_HELLO..=TYPE_KEEPALIVE {
            let _ = decode_all(&raw_frame(VERSION, kind, &bytes));
        }
    }

    #[test]
    fn corrupted_messages_never_panic(
        hb in arb_heartbeat(),
        frame in arb_frame(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        for mut bytes in [encode_heartbeat(&hb).unwrap_or_default(), encode_frame(&frame).unwrap()] {
            if bytes.is_empty() {
                continue;
            }
            for (at, value) in &flips {
                let at = at.index(bytes.len());
                bytes[at] = *value;
            }
            let _ = decode_heartbeat(&bytes);
            let _ = decode_all(&bytes);
        }
    }
}
