//! Valid inputs for each target, made with the project's own encoders where there are some:
//! the starting corpus (`depot-fuzz seed` writes them under `fuzz/corpus/<target>/`).

use depot_cache::protocol::{self as chp, KvMsg};
use depot_logd::protocol as logd;

use crate::frames::join;

/// Valid inputs for the target `name` (empty for an unknown name).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "logd_ingest" => vec![
            join(&[&b"app"[..], b"hello"]),
            join(&[&b"app.web"[..], b"level=ERROR source=host1", b"one", b"two"]),
            join(&[
                b"app".to_vec(),
                b"packed=1 level=debug".to_vec(),
                logd::pack_bodies(&[b"a", b"bc"]),
            ]),
            join(&[&b"batch-1"[..], b"app", b"", b"body"]),
            join(&[&b"app.WARNING.sub"[..], b"from a PUBHandler"]),
        ],
        "logd_replay" => vec![
            join(&[&b"REPLAY"[..], b"r1", b"app", b"1", &5u32.to_be_bytes()]),
            join(&[
                &b"REPLAY"[..],
                b"r2",
                b"app",
                b"-10m",
                &100u32.to_be_bytes(),
                b"until=@1764014400000\nlevel=ERROR\ngrep=disk",
            ]),
            join(&[&b"CREDIT"[..], b"r1", &7u32.to_be_bytes()]),
            join(&[&b"CANCEL"[..], b"r1"]),
            join(&[&b"STREAMS"[..], b"s", b"ap"]),
            join(&[&b"\x01replay/app/@1764014400000/nonce"[..]]),
        ],
        "logd_records" => {
            let mut batch = Vec::new();
            logd::pack_record(&mut batch, 9, 1_764_014_400_000_000_000, 3, "app", "host", b"body");
            vec![
                logd::encode_header(1, 2, 6, "app.web", "host1"),
                batch,
                logd::pack_bodies(&[b"one", b"", b"three"]),
            ]
        }
        "syslog" => vec![
            b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\"] \xef\xbb\xbf'su root' failed".to_vec(),
            b"<13>Feb  5 17:32:18 10.0.0.99 myapp[123]: Use the BFG!".to_vec(),
            b"<165>1 - - - - - -".to_vec(),
        ],
        "syslog_tcp" => vec![
            b"\x0729 <13>1 - host app - - - hi\n<13>Feb  5 17:32:18 host app: two\n".to_vec(),
            b"\x01<13>1 - h a - - - one\0<13>1 - h a - - - two\r\n".to_vec(),
            b"\x3f99999999999 <13>x\n".to_vec(),
        ],
        "cache_chp" => {
            let mut set = KvMsg::new(&b"/app/x"[..], &b"value"[..]);
            set.uuid = vec![7; 16];
            set.set_property("ttl", "30");
            let mut frames = vec![join(&set.encode()), join(&chp::hugz().encode())];
            frames.push(join(&chp::kthxbai(42, b"/app/").encode()));
            frames.push(join(&[&b"ICANHAZ?"[..], b"/app/"]));
            frames.push(join(&[&b"ICANHAZ?"[..], b"", b"packed"]));
            frames
        }
        "cache_stored" => {
            let mut msg = KvMsg::new(&b"/a"[..], &b"b"[..]);
            msg.seq = 5;
            msg.set_property("ttl", "1764014400000");
            let mut batch = Vec::new();
            chp::pack_entry(&mut batch, &msg);
            chp::pack_entry(&mut batch, &KvMsg::new(&b"/c"[..], &b""[..]));
            vec![
                msg.to_bytes(),
                batch,
                depot_cache::persist::Change::Update(msg.clone()).encode(),
                depot_cache::persist::Change::Renumber(77).encode(),
                b"ttl=3\nowner=me\n".to_vec(),
            ]
        }
        "queue_request" => vec![
            join(&[&b"PUB"[..], b"t1", b"jobs", b"m1", b"m2"]),
            join(&[&b"SUB"[..], b"jobs", b"workers", &10u32.to_be_bytes()]),
            join(&[&b"CREDIT"[..], b"jobs", b"workers", &0u32.to_be_bytes()]),
            join(&[&b"ACK"[..], b"jobs", b"workers", &[&1u64.to_be_bytes()[..], &2u64.to_be_bytes()].concat()]),
            join(&[&b"ACKTO"[..], b"jobs", b"workers", &9u64.to_be_bytes()]),
            join(&[&b"UNSUB"[..], b"jobs", b"workers"]),
            join(&[&b"HB"[..]]),
            join(&[&b"STATS"[..], b"jobs"]),
            join(&[&b"jobs"[..], b"pushed"]),
        ],
        "queue_reply" => {
            let mut batch = Vec::new();
            depot_queue::protocol::pack_delivery(&mut batch, 1, 0, b"m1");
            depot_queue::protocol::pack_delivery(&mut batch, 2, 3, b"");
            vec![
                join(&depot_queue::protocol::ok(b"t1", 1, 2)),
                join(&depot_queue::protocol::err("PUB", b"t1", "queue jobs is full")),
                join(&depot_queue::protocol::ready("jobs", "workers")),
                join(&[&b"MSG"[..], b"jobs", b"workers", &batch]),
                join(&[&b"HB"[..]]),
                join(&[&b"STATS"[..], b"[]"]),
            ]
        }
        "clock_request" => vec![
            join(&[&b"ADD"[..], b"in=5s", b"payload"]),
            join(&[&b"ADD"[..], b"at=1764014400000000000\nevery=1s\ncount=3\ntopic=alarm.x", b""]),
            join(&[&b"CANCEL"[..], &12u64.to_be_bytes()[..]]),
            join(&[&b"LIST"[..]]),
            join(&[&b"LIST"[..], &100u64.to_be_bytes()[..]]),
            join(&[&b"STREAMS"[..]]),
            join(&[&b"peer-id"[..], b"", b"LIST"]),
        ],
        "clock_reply" => {
            use depot_clock::protocol::{Reply, Tick};
            let tick = Tick {
                topic: "tick.1s".into(),
                seq: 5,
                scheduled_ns: 1_764_014_400_000_000_000,
                sent_ns: 1_764_014_400_000_050_000,
            };
            vec![
                join(&tick.encode()),
                join(&Reply::Added { id: 3, due_ns: 1_764_014_400_000_000_000 }.encode()),
                join(&Reply::Cancelled { id: 3 }.encode()),
                join(&Reply::Error("unknown timer id 9".into()).encode()),
                join(&[&b"FIRED"[..], &3u64.to_be_bytes(), &1u64.to_be_bytes(), &2u64.to_be_bytes(), &[0], b"payload"]),
            ]
        }
        "multicast_frames" => vec![
            join(&[
                logd::live_topic("app", 6),
                logd::encode_header(3, 4, 6, "app", "h"),
                b"body".to_vec(),
            ]),
            join(&[
                logd::live_topic("app", 6),
                logd::encode_header(3, 4, 6, "app", "h"),
                2u32.to_be_bytes().to_vec(),
                logd::pack_bodies(&[b"one", b"two"]),
            ]),
            join(&KvMsg::new(&b"/k"[..], &b"v"[..]).encode()),
            join(&chp::hugz().encode()),
            join(&[&b"anything"[..]]),
        ],
        "config" => vec![
            b"[store]\ncommit_interval = \"2ms\"\n\n[admin]\nlisten = \"127.0.0.1:9560\"\n".to_vec(),
            b"[logd]\n[cache]\n[queue]\n[clock]\n[multicast]\n".to_vec(),
            b"[retention]\nmax_age = \"7d\"\nmax_bytes = \"1GiB\"\n".to_vec(),
        ],
        "store_block" => {
            use depot_store::{encode_log_block, NewRecord};
            let record = |body: &'static [u8]| NewRecord { level: 6, source: "host", body };
            let block = encode_log_block(
                1,
                &[(100, record(b"first")), (150, record(b"")), (150, record(b"third"))],
            )
            .unwrap_or_default();
            vec![block]
        }
        _ => Vec::new(),
    }
}
