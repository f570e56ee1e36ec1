//! `sluice broker` driven by stock Kafka tools as separate processes: kcat
//! (Debian's, built on librdkafka) and kafka-python (a pure-Python client
//! with its own protocol code), via the scripts in `tests/clients/`.
//! A missing tool FAILS these tests with a hint to run `bash .ci/deps`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use crate::common;
use crate::common::broker::{
    BrokerOpts, TestBroker, client_script, kafkajs_modules, require_kafka_python, require_kafkajs,
    require_kcat, run_bounded, wait_timeout,
};

const DEADLINE: Duration = Duration::from_secs(30);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

fn kcat(broker: &TestBroker) -> Command {
    let mut c = Command::new(require_kcat());
    c.arg("-b")
        .arg(broker.bootstrap())
        .args(["-X", "broker.address.family=v4"]);
    c
}

/// Runs a command to completion (bounded), asserting success; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = run_bounded(cmd, CMD_TIMEOUT);
    assert!(
        out.status.success(),
        "{what} failed ({}); stderr:\n{}\nstdout:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn kcat_metadata(broker: &TestBroker) -> Value {
    let out = ok(kcat(broker).args(["-L", "-J"]));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("kcat -L -J output is not JSON ({e}): {out}"))
}

fn topic_partitions(md: &Value, topic: &str) -> Option<usize> {
    md["topics"]
        .as_array()?
        .iter()
        .find(|t| t["topic"] == topic)
        .map(|t| t["partitions"].as_array().map_or(0, |p| p.len()))
}

fn python(script: &str) -> Command {
    require_kafka_python();
    let mut c = Command::new("python3");
    c.arg(client_script(script)).env("PYTHONUNBUFFERED", "1");
    c
}

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("the script's output is not JSON ({e}): {out}"))
}

#[test]
fn kcat_lists_produces_and_consumes() {
    let broker = TestBroker::start_with(
        BrokerOpts::auto_create()
            .arg("--default-partitions")
            .arg("3"),
    );

    let md = kcat_metadata(&broker);
    let brokers = md["brokers"].as_array().expect("brokers in kcat -L -J");
    assert_eq!(brokers.len(), 1, "{md}");
    assert_eq!(brokers[0]["id"], 0);
    assert_eq!(brokers[0]["name"], broker.bootstrap().as_str(), "{md}");
    assert_eq!(topic_partitions(&md, "lines"), None, "no topic yet: {md}");

    // Produce a file of lines (the topic is auto-created with 3 partitions).
    let lines: Vec<String> = (0..500)
        .map(|i| format!("line {i:03} {}", "abc".repeat(i % 9)))
        .collect();
    let file = broker.scratch().join("lines.txt");
    fs::write(&file, lines.join("\n") + "\n").unwrap();
    ok(kcat(&broker)
        .args(["-P", "-t", "lines", "-X", "acks=all", "-l"])
        .arg(&file));

    let md = kcat_metadata(&broker);
    assert_eq!(topic_partitions(&md, "lines"), Some(3), "{md}");
    let text = ok(kcat(&broker).args(["-L", "-t", "lines"]));
    assert!(text.contains("topic \"lines\" with 3 partitions"), "{text}");
    assert!(text.contains("leader 0"), "{text}");

    // Consume everything to the end: the same lines.
    let out = ok(kcat(&broker).args(["-C", "-t", "lines", "-e", "-q", "-f", "%s\n"]));
    let mut got: Vec<&str> = out.lines().collect();
    let mut want: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "kcat -C returned {} lines",
        got.len()
    );
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);

    // And per partition, in file order with consecutive offsets.
    let out = ok(kcat(&broker).args(["-C", "-t", "lines", "-e", "-q", "-f", "%p\t%o\t%s\n"]));
    let mut per_partition: BTreeMap<u32, Vec<(i64, String)>> = BTreeMap::new();
    for l in out.lines() {
        let mut f = l.splitn(3, '\t');
        let p: u32 = f.next().unwrap().parse().unwrap();
        let o: i64 = f.next().unwrap().parse().unwrap();
        per_partition
            .entry(p)
            .or_default()
            .push((o, f.next().unwrap().to_string()));
    }
    assert_eq!(per_partition.values().map(Vec::len).sum::<usize>(), 500);
    for (p, recs) in &per_partition {
        assert!(*p < 3, "partition {p}");
        let offsets: Vec<i64> = recs.iter().map(|r| r.0).collect();
        assert_eq!(
            offsets,
            (0..recs.len() as i64).collect::<Vec<_>>(),
            "partition {p}"
        );
        let idx: Vec<usize> = recs
            .iter()
            .map(|r| {
                lines
                    .iter()
                    .position(|l| *l == r.1)
                    .expect("a produced line")
            })
            .collect();
        assert!(
            idx.windows(2).all(|w| w[0] < w[1]),
            "partition {p} is out of file order"
        );
    }

    // A single partition from an offset: the fullest one (librdkafka's
    // sticky partitioner may leave a partition without any line).
    let (fullest, recs) = per_partition
        .iter()
        .max_by_key(|(_, recs)| recs.len())
        .expect("lines in some partition");
    assert!(
        recs.len() >= 5,
        "{} lines in the fullest partition",
        recs.len()
    );
    let fullest = fullest.to_string();
    let out = ok(kcat(&broker).args([
        "-C", "-t", "lines", "-p", &fullest, "-o", "2", "-c", "3", "-e", "-q", "-f", "%o %s\n",
    ]));
    let expect: Vec<String> = recs
        .iter()
        .skip(2)
        .take(3)
        .map(|(o, s)| format!("{o} {s}"))
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expect);
}

#[test]
fn kcat_group_consumer_reads_everything() {
    let broker = TestBroker::start_with(
        BrokerOpts::auto_create()
            .arg("--default-partitions")
            .arg("4"),
    );
    let file = broker.scratch().join("in.txt");
    let lines: Vec<String> = (0..300).map(|i| format!("k{}:value {i}", i % 13)).collect();
    fs::write(&file, lines.join("\n") + "\n").unwrap();
    ok(kcat(&broker)
        .args(["-P", "-t", "grouped", "-K", ":", "-l"])
        .arg(&file));

    // kcat -G has no exit-at-end: read its output until everything arrived,
    // then stop it.
    let mut child = kcat(&broker)
        .args([
            "-G",
            "kcat-group",
            "-X",
            "auto.offset.reset=earliest",
            "-X",
            "session.timeout.ms=6000",
            "-q",
            "-u",
            "-f",
            "%p\t%o\t%k\t%s\n",
            "grouped",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kcat -G");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err_text = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while got.len() < lines.len() && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(l);
        }
    }
    // A moment for duplicates to show up.
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(l);
        }
    }
    // SAFETY: kill(2) on our own, not yet reaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    if wait_timeout(&mut child, Duration::from_secs(15)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let errors = err_text.join().unwrap_or_default();
    assert_eq!(
        got.len(),
        lines.len(),
        "kcat -G delivered {} of {} records; its stderr:\n{errors}",
        got.len(),
        lines.len()
    );
    let mut seen = BTreeSet::new();
    let mut per_partition: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    let mut key_partition: BTreeMap<String, u32> = BTreeMap::new();
    for l in &got {
        let f: Vec<&str> = l.splitn(4, '\t').collect();
        let (p, o, k, v) = (
            f[0].parse::<u32>().unwrap(),
            f[1].parse::<i64>().unwrap(),
            f[2],
            f[3],
        );
        assert!(seen.insert(format!("{k}:{v}")), "duplicate record {l}");
        per_partition.entry(p).or_default().push(o);
        let prev = key_partition.insert(k.to_string(), p);
        assert!(prev.is_none_or(|q| q == p), "key {k} in two partitions");
    }
    let want: BTreeSet<String> = lines.iter().cloned().collect();
    assert_eq!(seen, want);
    for (p, offsets) in per_partition {
        assert_eq!(
            offsets,
            (0..offsets.len() as i64).collect::<Vec<_>>(),
            "partition {p}"
        );
    }
}

#[test]
fn kafka_python_produces_and_consumes() {
    require_kafka_python();
    let broker = TestBroker::start_with(
        BrokerOpts::auto_create()
            .arg("--default-partitions")
            .arg("3"),
    );
    let out = ok(python("produce_consume.py").args([&broker.bootstrap(), "kp", "400"]));
    let v = json(&out);
    let rows = |name: &str| -> Vec<(i64, i64, String, String)> {
        v[name]
            .as_array()
            .unwrap_or_else(|| panic!("no {name} in {v}"))
            .iter()
            .map(|r| {
                (
                    r[0].as_i64().unwrap(),
                    r[1].as_i64().unwrap(),
                    r[2].as_str().unwrap().to_string(),
                    r[3].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let produced = rows("produced");
    let consumed = rows("consumed");
    assert_eq!(produced.len(), 400);
    // Acks: per partition, offsets 0..n in send order.
    let mut next: BTreeMap<i64, i64> = BTreeMap::new();
    for (p, o, k, _) in &produced {
        let n = next.entry(*p).or_insert(0);
        assert_eq!(*o, *n, "partition {p}: ack offsets in send order (key {k})");
        *n += 1;
    }
    assert!(next.keys().all(|p| (0..3).contains(p)), "{next:?}");
    assert_eq!(
        next.len(),
        3,
        "7 keys over 3 partitions reach all of them: {next:?}"
    );
    // Consumed: each record once, exactly as acknowledged, in per-partition order.
    assert_eq!(consumed.len(), 400, "consumed {} records", consumed.len());
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for (p, o, _, _) in &consumed {
        assert_eq!(*o, last.get(p).map_or(0, |l| l + 1), "partition {p} order");
        last.insert(*p, *o);
    }
    let mut a = produced.clone();
    let mut b = consumed.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

/// (partition, offset, value) as group_consume.py prints them.
type GroupRecord = (i64, i64, String);

#[test]
fn kafka_python_group_resumes_from_committed_offsets() {
    require_kafka_python();
    let broker = TestBroker::start_with(
        BrokerOpts::auto_create()
            .arg("--default-partitions")
            .arg("3"),
    );
    // 150 records, 50 per partition, produced with librdkafka.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("broker.address.family", "v4")
        .set("acks", "all")
        .create()
        .expect("producer");
    for i in 0..150 {
        let value = format!("record {i}");
        let key = format!("{i}");
        producer
            .send(
                BaseRecord::to("kpg")
                    .partition(i % 3)
                    .key(&key)
                    .payload(&value),
            )
            .unwrap_or_else(|(e, _)| panic!("enqueue: {e}"));
    }
    producer.flush(Duration::from_secs(20)).expect("flush");
    assert_eq!(producer.in_flight_count(), 0);

    let parse = |out: &str| -> (Vec<GroupRecord>, BTreeMap<String, i64>) {
        let v = json(out);
        let consumed = v["consumed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_i64().unwrap(),
                    r[1].as_i64().unwrap(),
                    r[2].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let committed = v["committed"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, o)| (k.clone(), o.as_i64().unwrap()))
            .collect();
        (consumed, committed)
    };

    let bootstrap = broker.bootstrap();
    let (first, committed1) = parse(&ok(
        python("group_consume.py").args([&bootstrap, "kpg", "kp-group", "75"])
    ));
    assert_eq!(first.len(), 75);
    // The commit is each partition's position: one past what it consumed.
    for p in 0..3i64 {
        let consumed = first.iter().filter(|r| r.0 == p).count() as i64;
        let committed = committed1.get(&p.to_string()).copied();
        if consumed > 0 {
            assert_eq!(
                committed,
                Some(consumed),
                "partition {p} after the first member"
            );
        }
    }

    let (rest, committed2) = parse(&ok(
        python("group_consume.py").args([&bootstrap, "kpg", "kp-group", "0"])
    ));
    assert_eq!(rest.len(), 75, "the second member gets exactly the rest");
    let mut all: Vec<GroupRecord> = first.iter().chain(&rest).cloned().collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a record was consumed twice");
    for p in 0..3i64 {
        let offsets: Vec<i64> = all.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
        assert_eq!(offsets, (0..50).collect::<Vec<_>>(), "partition {p}");
        assert_eq!(
            committed2.get(&p.to_string()),
            Some(&50),
            "final commit of partition {p}"
        );
    }
    let values: BTreeSet<String> = all.into_iter().map(|r| r.2).collect();
    assert_eq!(values, (0..150).map(|i| format!("record {i}")).collect());
}

fn sluice_topic(broker: &TestBroker, args: &[&str]) -> std::process::Output {
    let mut cmd = common::sluice();
    cmd.arg("topic")
        .args(args)
        .arg("--bootstrap")
        .arg(broker.bootstrap());
    run_bounded(&mut cmd, CMD_TIMEOUT)
}

#[test]
fn sluice_topic_commands_talk_to_a_running_broker() {
    let broker = TestBroker::start();
    let out = sluice_topic(
        &broker,
        &["create", "remote", "-p", "3", "--retention-ms", "1h"],
    );
    assert!(out.status.success(), "{out:?}");
    // Kafka clients see it too.
    assert_eq!(topic_partitions(&kcat_metadata(&broker), "remote"), Some(3));

    let again = sluice_topic(&broker, &["create", "remote", "-p", "3"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists"), "{err}");
    let quiet = sluice_topic(&broker, &["create", "remote", "-p", "3", "--if-not-exists"]);
    assert!(quiet.status.success(), "{quiet:?}");

    let grown = sluice_topic(&broker, &["alter", "remote", "--partitions", "5"]);
    assert!(grown.status.success(), "{grown:?}");
    let list = String::from_utf8_lossy(&sluice_topic(&broker, &["list"]).stdout).to_string();
    assert_eq!(list.lines().collect::<Vec<_>>(), ["remote"]);
    let describe = sluice_topic(&broker, &["describe", "remote"]);
    let text = String::from_utf8_lossy(&describe.stdout);
    assert!(text.contains("Partitions: 5"), "{text}");
    assert!(text.contains("retention.ms=3600000"), "{text}");

    // Configs of a live topic change through AlterConfigs; the configs set
    // before (retention.ms) stay, a deleted one goes back to its default.
    let altered = sluice_topic(
        &broker,
        &[
            "alter",
            "remote",
            "--config",
            "cleanup.policy=compact",
            "--config",
            "segment.bytes=65536",
        ],
    );
    assert!(altered.status.success(), "{altered:?}");
    let text =
        String::from_utf8_lossy(&sluice_topic(&broker, &["describe", "remote"]).stdout).to_string();
    assert!(
        text.contains("cleanup.policy=compact")
            && text.contains("segment.bytes=65536")
            && text.contains("retention.ms=3600000"),
        "{text}"
    );
    let reset = sluice_topic(
        &broker,
        &["alter", "remote", "--delete-config", "segment.bytes"],
    );
    assert!(reset.status.success(), "{reset:?}");
    let text =
        String::from_utf8_lossy(&sluice_topic(&broker, &["describe", "remote"]).stdout).to_string();
    assert!(
        text.contains("segment.bytes=1073741824") && text.contains("cleanup.policy=compact"),
        "{text}"
    );
    let purged = sluice_topic(
        &broker,
        &["delete-records", "remote", "-p", "0", "--before", "end"],
    );
    assert!(purged.status.success(), "{purged:?}");
    assert_eq!(
        String::from_utf8_lossy(&purged.stdout),
        "remote-0: log start offset 0\n"
    );
    let past = sluice_topic(
        &broker,
        &["delete-records", "remote", "-p", "1", "--before", "5"],
    );
    assert!(!past.status.success());
    let err = String::from_utf8_lossy(&past.stderr);
    assert!(err.contains("cannot delete records of remote-1"), "{err}");
    let bad = sluice_topic(
        &broker,
        &["alter", "remote", "--config", "cleanup.policy=shred"],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("cannot alter the configs of topic"), "{err}");

    let deleted = sluice_topic(&broker, &["delete", "remote"]);
    assert!(deleted.status.success(), "{deleted:?}");
    assert_eq!(topic_partitions(&kcat_metadata(&broker), "remote"), None);

    // No broker there: a clear error, not a hang or a log flood.
    let mut cmd = common::sluice();
    cmd.args(["topic", "list", "--bootstrap", "127.0.0.1:1"]);
    let out = run_bounded(&mut cmd, CMD_TIMEOUT);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a broker running at 127.0.0.1:1"), "{err}");
    assert!(err.lines().count() <= 2, "one error line expected:\n{err}");
}

/// The committed/aborted/committed scenario of the transaction scripts:
/// read_committed sees the two committed transactions, read_uncommitted all
/// three, each in order.
fn check_transaction_script(out: &str) {
    let v = json(out);
    let values = |name: &str| -> Vec<String> {
        v[name]
            .as_array()
            .unwrap_or_else(|| panic!("no {name} in {v}"))
            .iter()
            .map(|x| x.as_str().unwrap_or_default().to_string())
            .collect()
    };
    let batch = |name: &str| -> Vec<String> { (0..4).map(|i| format!("{name}-{i}")).collect() };
    let committed = [batch("first"), batch("second")].concat();
    let everything = [batch("first"), batch("aborted"), batch("second")].concat();
    assert_eq!(values("read_committed"), committed);
    assert_eq!(values("read_uncommitted"), everything);
}

#[test]
fn kafka_python_transactions_commit_abort_and_read_committed() {
    require_kafka_python();
    let broker = TestBroker::start_with(BrokerOpts::auto_create());
    check_transaction_script(&ok(
        python("transactions.py").args([&broker.bootstrap(), "kpt"])
    ));
}

#[test]
fn kafkajs_transactions_commit_abort_and_read_committed() {
    require_kafkajs();
    let broker = TestBroker::start_with(BrokerOpts::auto_create());
    let mut node = Command::new("node");
    node.env("NODE_PATH", kafkajs_modules())
        .arg(client_script("kafkajs_transactions.js"))
        .args([&broker.bootstrap(), "kjs"]);
    check_transaction_script(&ok(&mut node));
}
