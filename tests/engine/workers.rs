//! Workers of one job sharing its tasks through a group on `sluice broker`
//! (`sluice_engine::workers`): a first assignment that covers every task
//! once and is balanced; a worker leaving (its tasks move, the others keep
//! theirs); a worker killed without a word (its tasks run elsewhere within
//! two session timeouts); a worker of another job refused by name; the
//! broker restarted under the workers (they rejoin and keep their tasks).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sluice::workers::{Generation, GroupMember, LocalTasks, TaskId, WorkerConfig, WorkersError};
use tokio::sync::{mpsc, watch};

use crate::common::broker::TestBroker;

const SESSION: Duration = Duration::from_secs(2);
const GROUP: &str = "wordcount-workers";

fn all_tasks() -> Vec<TaskId> {
    (0..2)
        .flat_map(|stage| (0..8).map(move |partition| TaskId { stage, partition }))
        .collect()
}

fn config(broker: &TestBroker, worker: &str, job: &str) -> WorkerConfig {
    let mut c = WorkerConfig::new(&broker.bootstrap(), GROUP, worker, job);
    c.session_timeout = SESSION;
    c.rebalance_timeout = Duration::from_secs(10);
    c.heartbeat_interval = Duration::from_millis(200);
    c.request_timeout = Duration::from_secs(10);
    c
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Run,
    Leave,
    /// Vanish without LeaveGroup, as a SIGKILLed process does.
    Vanish,
}

/// A worker's loop: join, hold the tasks until the group rebalances, join
/// again with what it held, until told to stop.
async fn run_worker(
    mut member: GroupMember,
    name: String,
    reports: mpsc::UnboundedSender<(String, Result<Generation, String>)>,
    mut stop: watch::Receiver<Stop>,
) {
    let mut local = LocalTasks::default();
    loop {
        let generation = match member.join(&local).await {
            Ok(g) => g,
            Err(e) => {
                let _ = reports.send((name.clone(), Err(e.to_string())));
                member.leave().await;
                return;
            }
        };
        local.owned = generation.tasks.clone();
        local.state = generation.tasks.iter().map(|t| (*t, 1_000)).collect();
        let _ = reports.send((name.clone(), Ok(generation)));
        loop {
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let how = *stop.borrow();
            match how {
                Stop::Leave => {
                    member.leave().await;
                    return;
                }
                Stop::Vanish => {
                    drop(member);
                    return;
                }
                Stop::Run => {}
            }
            if member.needs_rejoin() {
                break;
            }
        }
    }
}

struct Cluster {
    latest: BTreeMap<String, Generation>,
    stops: BTreeMap<String, watch::Sender<Stop>>,
    reports: mpsc::UnboundedReceiver<(String, Result<Generation, String>)>,
    tx: mpsc::UnboundedSender<(String, Result<Generation, String>)>,
}

impl Cluster {
    fn new() -> Cluster {
        let (tx, reports) = mpsc::unbounded_channel();
        Cluster {
            latest: BTreeMap::new(),
            stops: BTreeMap::new(),
            reports,
            tx,
        }
    }

    fn start(&mut self, broker: &TestBroker, name: &str, job: &str) {
        let (stop_tx, stop) = watch::channel(Stop::Run);
        let member = GroupMember::new(config(broker, name, job), all_tasks());
        tokio::spawn(run_worker(member, name.to_string(), self.tx.clone(), stop));
        self.stops.insert(name.to_string(), stop_tx);
    }

    fn stop(&mut self, name: &str, how: Stop) {
        let _ = self.stops.remove(name).expect("a running worker").send(how);
        self.latest.remove(name);
    }

    /// Waits until exactly `workers` hold one generation whose tasks cover
    /// every task once; returns their tasks.
    async fn stable(
        &mut self,
        workers: &[&str],
        within: Duration,
    ) -> BTreeMap<String, Vec<TaskId>> {
        let deadline = Instant::now() + within;
        loop {
            let names: BTreeSet<&str> = self.latest.keys().map(String::as_str).collect();
            let generations: BTreeSet<i32> =
                self.latest.values().map(|g| g.generation_id).collect();
            if names == workers.iter().copied().collect() && generations.len() == 1 {
                let mut seen = BTreeSet::new();
                let complete = self
                    .latest
                    .values()
                    .flat_map(|g| &g.tasks)
                    .all(|t| seen.insert(*t))
                    && seen == all_tasks().into_iter().collect();
                if complete {
                    return self
                        .latest
                        .iter()
                        .map(|(n, g)| (n.clone(), g.tasks.clone()))
                        .collect();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no stable assignment over {workers:?} within {within:?}: {:?}",
                self.latest
            );
            match tokio::time::timeout(left, self.reports.recv()).await {
                Ok(Some((name, Ok(g)))) => {
                    if self.stops.contains_key(&name) {
                        self.latest.insert(name, g);
                    }
                }
                Ok(Some((name, Err(e)))) => panic!("worker {name} failed: {e}"),
                Ok(None) | Err(_) => {}
            }
        }
    }
}

fn assert_balanced(assignment: &BTreeMap<String, Vec<TaskId>>) {
    let sizes: Vec<usize> = assignment.values().map(Vec::len).collect();
    let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
    assert!(max - min <= 1, "unbalanced: {assignment:?}");
}

#[test]
fn workers_share_tasks_and_take_over_from_leavers_and_the_dead() {
    let broker = TestBroker::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cluster = Cluster::new();
        for w in ["a", "b", "c"] {
            cluster.start(&broker, w, "job-v1");
        }
        let first = cluster.stable(&["a", "b", "c"], Duration::from_secs(30)).await;
        assert_balanced(&first);

        // A graceful leave: its tasks move, the others keep theirs.
        cluster.stop("c", Stop::Leave);
        let second = cluster.stable(&["a", "b"], Duration::from_secs(30)).await;
        assert_balanced(&second);
        for w in ["a", "b"] {
            for t in &first[w] {
                assert!(second[w].contains(t), "{w} lost {t} when c left: {second:?}");
            }
        }

        // A newcomer gets a share; then a worker vanishes without leaving.
        cluster.start(&broker, "d", "job-v1");
        let third = cluster.stable(&["a", "b", "d"], Duration::from_secs(30)).await;
        assert_balanced(&third);
        let killed = Instant::now();
        cluster.stop("b", Stop::Vanish);
        let fourth = cluster.stable(&["a", "d"], 4 * SESSION).await;
        let took = killed.elapsed();
        assert_balanced(&fourth);
        assert!(
            took < 2 * SESSION,
            "the vanished worker's tasks ran elsewhere after {took:?}, more than twice the {SESSION:?} session timeout"
        );
        println!("tasks of a vanished worker reassigned after {took:?} (session timeout {SESSION:?})");

        // A worker of another job is refused by name, the others go on.
        let mut stranger = GroupMember::new(config(&broker, "e", "job-v2"), all_tasks());
        match stranger.join(&LocalTasks::default()).await {
            Err(WorkersError::JobMismatch { ours, theirs, .. }) => {
                assert_eq!((ours.as_str(), theirs.as_str()), ("job-v2", "job-v1"));
            }
            other => panic!("a worker of another job joined: {other:?}"),
        }
        stranger.leave().await;
        let fifth = cluster.stable(&["a", "d"], Duration::from_secs(30)).await;
        assert_balanced(&fifth);
        cluster.stop("a", Stop::Leave);
        cluster.stop("d", Stop::Leave);
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
}

/// The coordinator goes away (`sluice broker` restarted on the same port):
/// the workers notice, find it again, rejoin, and keep their own tasks.
#[test]
fn workers_rejoin_after_the_broker_restarts_and_keep_their_tasks() {
    let mut broker = TestBroker::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cluster = Cluster::new();
    let before = rt.block_on(async {
        for w in ["a", "b"] {
            cluster.start(&broker, w, "job-v1");
        }
        cluster.stable(&["a", "b"], Duration::from_secs(30)).await
    });
    broker.restart();
    rt.block_on(async {
        // Only generations joined after the restart count.
        cluster.latest.clear();
        let after = cluster.stable(&["a", "b"], Duration::from_secs(60)).await;
        assert_eq!(
            after, before,
            "the workers kept their tasks across the restart"
        );
        cluster.stop("a", Stop::Leave);
        cluster.stop("b", Stop::Leave);
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
}

/// A task's offsets go into its transaction as committed by its worker's
/// member id in its generation (KIP-447): once the group moved on, the
/// coordinator refuses the old generation's commit, and takes the new one.
#[test]
fn a_transactions_offsets_from_an_older_generation_are_refused() {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseProducer, Producer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    use sluice::driver::txn_offsets::send_offsets;

    let broker = TestBroker::start();
    broker.create_topic("input", 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut a = GroupMember::new(config(&broker, "a", "job-v1"), all_tasks());
    let mut b = GroupMember::new(config(&broker, "b", "job-v1"), all_tasks());
    let (old, now) = rt.block_on(async {
        let old = a.join(&LocalTasks::default()).await.expect("a joins");
        // b joins: the group moves to the next generation, which a must
        // join again.
        let rejoin = async {
            while !a.needs_rejoin() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            a.join(&LocalTasks::default()).await
        };
        let none = LocalTasks::default();
        let (now, other) = tokio::join!(rejoin, b.join(&none));
        other.expect("b joins");
        (old, now.expect("a joins again"))
    });
    assert!(
        now.generation_id > old.generation_id,
        "{now:?} after {old:?}"
    );

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("transactional.id", "a-task")
        .create()
        .expect("a transactional producer");
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).expect("init");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("input", 0, Offset::Offset(0))
        .unwrap();
    producer.begin_transaction().expect("begin");
    let refused = send_offsets(
        producer.client(),
        &offsets,
        GROUP,
        old.generation_id,
        &old.member_id,
        timeout,
    )
    .expect_err("the older generation's commit is refused");
    assert!(refused.out_of_generation(), "{refused}");
    let _ = producer.abort_transaction(timeout);
    producer.begin_transaction().expect("begin again");
    send_offsets(
        producer.client(),
        &offsets,
        GROUP,
        now.generation_id,
        &now.member_id,
        timeout,
    )
    .expect("the current generation's commit is taken");
    producer.commit_transaction(timeout).expect("commit");
    rt.block_on(async {
        a.leave().await;
        b.leave().await;
    });
}
