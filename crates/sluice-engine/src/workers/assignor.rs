//! Which worker runs which task: the group leader's assignment, computed
//! from every member's metadata, in the spirit of Kafka Streams' sticky,
//! state-aware assignor.
//!
//! Rules, in order:
//! 1. Balance: every member gets ⌊T/M⌋ or ⌈T/M⌉ of the T tasks; the larger
//!    shares go to the members that ran the most tasks before, so a stable
//!    group keeps its exact assignment.
//! 2. Stickiness: a member keeps the tasks it ran in the last generation,
//!    up to its share (when two members claim one task, after a split, the
//!    one whose local state is furthest ahead keeps it).
//! 3. State affinity: a task nobody keeps goes to the member with room whose
//!    local state for it is furthest ahead (its restore is shortest), else
//!    to the least loaded member.
//!
//! Standby replicas (Kafka Streams' `num.standby.replicas`) are placed
//! after the active tasks: each stateful task gets up to `replicas` copies
//! on members other than its active one, each on the member whose local
//! state for it is furthest ahead, then on the one with the fewest
//! standbys.
//!
//! Pure and deterministic: the same inputs give the same assignment
//! whichever member leads. Never talks to the network.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// One unit of work: a stage of the job over one partition (Kafka
/// Streams' `<subtopology>_<partition>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    pub stage: u32,
    pub partition: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.stage, self.partition)
    }
}

/// What the leader knows of a member when it assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The group's member id (changes when a worker rejoins from scratch).
    pub member_id: String,
    /// Tasks it ran in the last generation.
    pub owned: Vec<TaskId>,
    /// How far its local state of a task is (the changelog offset it holds).
    pub state: BTreeMap<TaskId, i64>,
}

/// Assigns every task of `tasks` to exactly one member (by member id).
/// Every member appears in the result, with no task if there are fewer
/// tasks than members.
pub fn assign(tasks: &[TaskId], members: &[MemberView]) -> BTreeMap<String, Vec<TaskId>> {
    let mut members: Vec<&MemberView> = members.iter().collect();
    members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    members.dedup_by(|a, b| a.member_id == b.member_id);
    let mut out: BTreeMap<String, Vec<TaskId>> = members
        .iter()
        .map(|m| (m.member_id.clone(), Vec::new()))
        .collect();
    if members.is_empty() {
        return out;
    }
    let tasks: BTreeSet<TaskId> = tasks.iter().copied().collect();
    let state_of = |m: usize, t: &TaskId| members[m].state.get(t).copied();

    // Previous owners; a task claimed twice stays with the most advanced state.
    let mut owner: BTreeMap<TaskId, usize> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        for t in m.owned.iter().filter(|t| tasks.contains(t)) {
            let better = match owner.get(t) {
                None => true,
                Some(&j) => state_of(i, t).unwrap_or(-1) > state_of(j, t).unwrap_or(-1),
            };
            if better {
                owner.insert(*t, i);
            }
        }
    }
    let mut previous = vec![Vec::new(); members.len()];
    for (t, &i) in &owner {
        previous[i].push(*t);
    }

    // Shares: the larger ones to the members that held the most.
    let n = members.len();
    let (floor, extra) = (tasks.len() / n, tasks.len() % n);
    let mut by_held: Vec<usize> = (0..n).collect();
    by_held.sort_by_key(|&i| (std::cmp::Reverse(previous[i].len()), i));
    let mut share = vec![floor; n];
    for &i in by_held.iter().take(extra) {
        share[i] += 1;
    }

    let mut assigned: Vec<Vec<TaskId>> = vec![Vec::new(); n];
    let mut placed: BTreeSet<TaskId> = BTreeSet::new();
    for i in 0..n {
        // Keep the tasks whose local state is furthest ahead first.
        let mut keep = previous[i].clone();
        keep.sort_by_key(|t| (std::cmp::Reverse(state_of(i, t).unwrap_or(-1)), *t));
        for t in keep.into_iter().take(share[i]) {
            assigned[i].push(t);
            placed.insert(t);
        }
    }
    for t in tasks.iter().filter(|t| !placed.contains(t)) {
        let with_room = (0..n).filter(|&i| assigned[i].len() < share[i]);
        let best = with_room
            .max_by_key(|&i| {
                (
                    state_of(i, t).unwrap_or(-1),
                    std::cmp::Reverse(assigned[i].len()),
                    std::cmp::Reverse(i),
                )
            })
            .expect("the shares add up to the task count");
        assigned[best].push(*t);
    }
    for (i, mut list) in assigned.into_iter().enumerate() {
        list.sort_unstable();
        out.insert(members[i].member_id.clone(), list);
    }
    out
}

/// Places up to `replicas` standby copies of each of `stateful` tasks,
/// never on the member running the task (`active`) nor twice on one
/// member. With fewer other members than `replicas`, a task gets fewer.
pub fn assign_standbys(
    active: &BTreeMap<String, Vec<TaskId>>,
    stateful: &[TaskId],
    members: &[MemberView],
    replicas: u32,
) -> BTreeMap<String, Vec<TaskId>> {
    let mut out: BTreeMap<String, Vec<TaskId>> =
        active.keys().map(|m| (m.clone(), Vec::new())).collect();
    if replicas == 0 {
        return out;
    }
    let runs: BTreeMap<TaskId, &str> = active
        .iter()
        .flat_map(|(m, tasks)| tasks.iter().map(move |t| (*t, m.as_str())))
        .collect();
    let state = |m: &str, t: &TaskId| {
        members
            .iter()
            .find(|v| v.member_id == m)
            .and_then(|v| v.state.get(t).copied())
            .unwrap_or(-1)
    };
    let ids: Vec<String> = out.keys().cloned().collect();
    let stateful: BTreeSet<TaskId> = stateful.iter().copied().collect();
    for t in &stateful {
        for _ in 0..replicas {
            let best = ids
                .iter()
                .filter(|m| runs.get(t) != Some(&m.as_str()) && !out[*m].contains(t))
                .max_by_key(|m| {
                    (
                        state(m, t),
                        std::cmp::Reverse(out[*m].len()),
                        std::cmp::Reverse((*m).clone()),
                    )
                })
                .cloned();
            match best {
                Some(m) => out.entry(m).or_default().push(*t),
                None => break,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tasks(stages: u32, partitions: u32) -> Vec<TaskId> {
        (0..stages)
            .flat_map(|stage| (0..partitions).map(move |partition| TaskId { stage, partition }))
            .collect()
    }

    fn member(id: &str, owned: &[TaskId]) -> MemberView {
        MemberView {
            member_id: id.into(),
            owned: owned.to_vec(),
            state: owned.iter().map(|t| (*t, 100)).collect(),
        }
    }

    fn check_complete(all: &[TaskId], a: &BTreeMap<String, Vec<TaskId>>) {
        let mut seen = BTreeSet::new();
        for list in a.values() {
            for t in list {
                assert!(seen.insert(*t), "task {t} assigned twice: {a:?}");
            }
        }
        assert_eq!(seen, all.iter().copied().collect(), "every task assigned");
        let sizes: Vec<usize> = a.values().map(Vec::len).collect();
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(max - min <= 1, "unbalanced: {sizes:?}");
    }

    #[test]
    fn a_stable_group_keeps_its_assignment_and_a_leaver_s_tasks_are_spread() {
        let all = tasks(2, 8);
        let first = assign(
            &all,
            &[member("a", &[]), member("b", &[]), member("c", &[])],
        );
        check_complete(&all, &first);
        let again = assign(
            &all,
            &[
                member("a", &first["a"]),
                member("b", &first["b"]),
                member("c", &first["c"]),
            ],
        );
        assert_eq!(again, first, "nothing changed, nothing moves");
        let without_c = assign(&all, &[member("a", &first["a"]), member("b", &first["b"])]);
        check_complete(&all, &without_c);
        for m in ["a", "b"] {
            for t in &first[m] {
                assert!(without_c[m].contains(t), "{m} lost its task {t}");
            }
        }
    }

    #[test]
    fn unowned_tasks_go_where_their_state_is() {
        let all = tasks(1, 4);
        let mut warm = member("z", &[]);
        warm.state.insert(
            TaskId {
                stage: 0,
                partition: 2,
            },
            500,
        );
        let a = assign(&all, &[member("a", &[]), warm]);
        assert!(
            a["z"].contains(&TaskId {
                stage: 0,
                partition: 2
            }),
            "{a:?}"
        );
    }

    #[test]
    fn a_task_claimed_twice_stays_with_the_most_advanced_state() {
        let t = TaskId {
            stage: 0,
            partition: 0,
        };
        let mut behind = member("a", &[t]);
        behind.state.insert(t, 10);
        let ahead = member("b", &[t]);
        let a = assign(&[t], &[behind, ahead]);
        assert_eq!(a["b"], vec![t]);
        assert!(a["a"].is_empty());
    }

    #[test]
    fn standbys_never_share_a_member_with_their_task_and_follow_local_state() {
        let all = tasks(2, 6);
        let stateful: Vec<TaskId> = all.iter().copied().filter(|t| t.stage == 1).collect();
        let views = [member("a", &[]), member("b", &[]), member("c", &[])];
        let active = assign(&all, &views);
        let standbys = assign_standbys(&active, &stateful, &views, 1);
        let mut copies = BTreeMap::new();
        for (m, list) in &standbys {
            for t in list {
                assert!(!active[m].contains(t), "{m} runs {t} and stands by for it");
                *copies.entry(*t).or_insert(0) += 1;
            }
        }
        assert_eq!(
            copies.len(),
            stateful.len(),
            "every stateful task has a copy"
        );
        assert!(copies.values().all(|&n| n == 1));
        let loads: Vec<usize> = standbys.values().map(Vec::len).collect();
        assert!(
            loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
            "standbys spread evenly: {loads:?}"
        );
        // Two replicas over three members: both others hold one.
        let two = assign_standbys(&active, &stateful, &views, 2);
        for t in &stateful {
            let holders = two.values().filter(|l| l.contains(t)).count();
            assert_eq!(holders, 2, "{t}: {two:?}");
        }
        // More replicas than other members: as many as there are.
        let pair = [member("a", &[]), member("b", &[])];
        let active = assign(&all, &pair);
        let three = assign_standbys(&active, &stateful, &pair, 3);
        for t in &stateful {
            assert_eq!(three.values().filter(|l| l.contains(t)).count(), 1);
        }
        // A member whose local copy of a task is furthest ahead gets it.
        let t = stateful[0];
        let mut warm = member("c", &[]);
        warm.state.insert(t, 1_000);
        let views = [member("a", &[]), member("b", &[]), warm];
        let active = assign(&all, &views);
        if !active["c"].contains(&t) {
            let standbys = assign_standbys(&active, &stateful, &views, 1);
            assert!(standbys["c"].contains(&t), "{standbys:?}");
        }
    }

    proptest! {
        #[test]
        fn assignments_are_complete_balanced_and_sticky(
            stages in 1u32..4,
            partitions in 1u32..17,
            members in 1usize..7,
            seed in any::<u64>(),
        ) {
            let all = tasks(stages, partitions);
            let ids: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
            // A previous generation with a random owner (or none) per task.
            let mut owned: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
            for (k, t) in all.iter().enumerate() {
                let pick = (seed.rotate_left(k as u32) % (members as u64 + 1)) as usize;
                if pick < members {
                    owned.entry(ids[pick].clone()).or_default().push(*t);
                }
            }
            let views: Vec<MemberView> = ids
                .iter()
                .map(|id| member(id, owned.get(id).map_or(&[][..], |v| &v[..])))
                .collect();
            let a = assign(&all, &views);
            check_complete(&all, &a);
            // Sticky: a member keeps min(share, held) of its tasks.
            let floor = all.len() / members;
            for id in &ids {
                let held = owned.get(id).map_or(0, Vec::len);
                let kept = owned
                    .get(id)
                    .map_or(0, |v| v.iter().filter(|t| a[id].contains(t)).count());
                prop_assert!(kept >= held.min(floor), "{id} kept {kept} of {held} (floor {floor})");
            }
            // Running it again on its own result moves nothing.
            let views: Vec<MemberView> = ids.iter().map(|id| member(id, &a[id])).collect();
            prop_assert_eq!(assign(&all, &views), a);
        }
    }
}
