//! The generator against Nexmark's rules: proportions, ids, references,
//! timestamps, field shapes, and determinism.

use super::*;

fn bid(e: Event<'_>) -> Bid<'_> {
    match e {
        Event::Bid(b) => b,
        other => panic!("not a bid: {other:?}"),
    }
}

#[test]
fn every_fifty_events_are_one_person_three_auctions_and_46_bids() {
    for cycle in [0u64, 1, 2, 12_345, 1_000_000_000] {
        let kinds: Vec<EventKind> = (cycle * 50..cycle * 50 + 50).map(EventKind::of).collect();
        assert_eq!(kinds[0], EventKind::Person);
        assert!(kinds[1..4].iter().all(|&k| k == EventKind::Auction));
        assert!(kinds[4..].iter().all(|&k| k == EventKind::Bid));
    }
    let g = Generator::new(NexmarkConfig::default());
    let mut counts = [0u64; 3];
    for n in 0..5000 {
        let event = g.event(n);
        assert_eq!(event.kind(), EventKind::of(n));
        counts[event.kind() as usize] += 1;
        if (n + 1) % 50 == 0 {
            let cycles = (n + 1) / 50;
            assert_eq!(
                counts,
                [cycles, 3 * cycles, 46 * cycles],
                "after {} events",
                n + 1
            );
        }
    }
}

#[test]
fn counts_and_indexes_agree_with_counting_one_by_one() {
    let mut counts = [0u64; 3];
    for n in 0..1000u64 {
        for kind in EventKind::ALL {
            assert_eq!(kind.count_in(n), counts[kind as usize], "{kind:?} in {n}");
        }
        let kind = EventKind::of(n);
        assert_eq!(kind_index(n), counts[kind as usize], "index of {n}");
        assert_eq!(kind.event_number(kind_index(n)), n);
        counts[kind as usize] += 1;
    }
}

#[test]
fn newest_ids_follow_nexmarks_formulas() {
    // GeneratorConfig's lastBase0PersonId / lastBase0AuctionId, verbatim.
    let (p, a, total) = (1i64, 3i64, 50i64);
    for n in 0..2000i64 {
        let (epoch, offset) = (n / total, n % total);
        let person = epoch * p + if offset >= p { p - 1 } else { offset };
        let auction = if offset < p {
            (epoch - 1) * a + a - 1
        } else if offset >= p + a {
            epoch * a + a - 1
        } else {
            epoch * a + offset - p
        };
        assert_eq!(last_base0_person_id(n as u64) as i64, person, "{n}");
        assert_eq!(last_base0_auction_id(n as u64), auction, "{n}");
    }
}

#[test]
fn the_same_seed_gives_the_same_events_in_any_order_and_on_any_thread() {
    let config = NexmarkConfig {
        seed: 1234,
        ..NexmarkConfig::default()
    };
    let a = Generator::new(config);
    let b = Generator::new(config);
    let forward: Vec<Event<'_>> = (0..3000).map(|n| a.event(n)).collect();
    let backward: Vec<Event<'_>> = (0..3000).rev().map(|n| b.event(n)).collect();
    assert!(forward.iter().eq(backward.iter().rev()));
    let from_threads: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3u64)
            .map(|t| {
                let b = &b;
                s.spawn(move || {
                    (t * 1000..t * 1000 + 1000)
                        .map(|n| format!("{:?}", b.event(n)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sequential: Vec<String> = forward.iter().map(|e| format!("{e:?}")).collect();
    assert_eq!(from_threads.concat(), sequential);

    let other = Generator::new(NexmarkConfig {
        seed: 1235,
        ..config
    });
    let differing = (0..3000).filter(|&n| other.event(n) != a.event(n)).count();
    assert!(differing > 2900, "only {differing} of 3000 events differ");
}

#[test]
fn ids_refer_to_people_and_auctions_created_before_or_just_ahead() {
    let g = Generator::new(NexmarkConfig::default());
    let (mut last_person, mut last_auction) = (None::<i64>, None::<i64>);
    let (mut bids, mut hot_auction_bids, mut ahead) = (0u64, 0u64, 0u64);
    for n in 0..50_000 {
        match g.event(n) {
            Event::Person(p) => {
                // Ids are consecutive from 1000.
                assert_eq!(p.id, last_person.map_or(FIRST_PERSON_ID, |l| l + 1));
                last_person = Some(p.id);
            }
            Event::Auction(a) => {
                assert_eq!(a.id, last_auction.map_or(FIRST_AUCTION_ID, |l| l + 1));
                last_auction = Some(a.id);
                let newest = last_person.unwrap();
                assert!(a.seller >= FIRST_PERSON_ID && a.seller <= newest + PERSON_ID_LEAD as i64);
                assert!(a.seller > newest - NUM_ACTIVE_PEOPLE as i64, "{a:?}");
                assert!((10..15).contains(&a.category), "{a:?}");
                assert!(a.reserve >= a.initial_bid);
                assert!(a.expires > a.date_time);
            }
            Event::Bid(b) => {
                bids += 1;
                let (people, auctions) = (last_person.unwrap(), last_auction.unwrap());
                assert!(b.auction >= FIRST_AUCTION_ID, "{b:?}");
                assert!(b.auction <= auctions + AUCTION_ID_LEAD as i64, "{b:?}");
                assert!(
                    b.auction >= auctions - NUM_IN_FLIGHT_AUCTIONS as i64,
                    "{b:?}"
                );
                assert!(b.bidder >= FIRST_PERSON_ID, "{b:?}");
                assert!(b.bidder <= people + PERSON_ID_LEAD as i64, "{b:?}");
                assert!(b.bidder > people - NUM_ACTIVE_PEOPLE as i64, "{b:?}");
                let hot = (auctions - FIRST_AUCTION_ID) / 100 * 100 + FIRST_AUCTION_ID;
                hot_auction_bids += u64::from(b.auction == hot);
                ahead += u64::from(b.auction > auctions);
            }
        }
    }
    // Half the bids go to the hot auction (plus the random ones landing on
    // it); a few percent to auctions not created yet (the lead).
    let hot_share = hot_auction_bids as f64 / bids as f64;
    assert!((0.48..0.56).contains(&hot_share), "{hot_share}");
    let ahead_share = ahead as f64 / bids as f64;
    assert!((0.02..0.07).contains(&ahead_share), "{ahead_share}");
}

#[test]
fn event_time_advances_at_the_configured_rate() {
    let g = Generator::new(NexmarkConfig::default());
    assert_eq!(g.timestamp_ms(0), DEFAULT_BASE_TIME_MS);
    assert_eq!(g.timestamp_ms(9_999), DEFAULT_BASE_TIME_MS);
    assert_eq!(g.timestamp_ms(10_000), DEFAULT_BASE_TIME_MS + 1);
    assert_eq!(g.timestamp_ms(9_999_999), DEFAULT_BASE_TIME_MS + 999);
    assert_eq!(g.timestamp_ms(10_000_000), DEFAULT_BASE_TIME_MS + 1000);
    let slow = Generator::new(NexmarkConfig {
        rate: 3,
        base_time_ms: 5,
        seed: 0,
    });
    let times: Vec<i64> = (0..7).map(|n| slow.timestamp_ms(n)).collect();
    assert_eq!(times, [5, 338, 671, 1005, 1338, 1671, 2005]);
    for n in 0..100 {
        assert_eq!(slow.event(n).date_time(), slow.timestamp_ms(n));
    }
    // Auctions run for about as long as 100 auctions take to appear.
    let a = (1..10_000)
        .filter_map(|n| match slow.event(n) {
            Event::Auction(a) => Some(a.expires - a.date_time),
            _ => None,
        })
        .collect::<Vec<_>>();
    let mean = a.iter().sum::<i64>() as f64 / a.len() as f64;
    let horizon = 1666.0 * 1000.0 / 3.0;
    assert!(
        (0.9 * horizon..1.1 * horizon).contains(&mean),
        "{mean} vs {horizon}"
    );
}

#[test]
fn fields_have_nexmark_shapes_and_sizes() {
    let g = Generator::new(NexmarkConfig::default());
    let (mut person_bytes, mut persons) = (0usize, 0usize);
    let (mut bid_bytes, mut hot_channels, mut with_channel_id) = (0usize, 0usize, 0usize);
    let mut channel_bids = 0usize;
    for n in 0..20_000 {
        match g.event(n) {
            Event::Person(p) => {
                persons += 1;
                let (first, last) = p.name.split_once(' ').unwrap();
                assert!(
                    FIRST_NAMES.contains(&first) && LAST_NAMES.contains(&last),
                    "{p:?}"
                );
                assert!(US_CITIES.contains(&p.city) && US_STATES.contains(&p.state));
                let (user, host) = p.email_address.split_once('@').unwrap();
                assert!(!user.is_empty() && host.ends_with(".com"), "{p:?}");
                let groups: Vec<&str> = p.credit_card.split(' ').collect();
                assert_eq!(groups.len(), 4);
                assert!(
                    groups
                        .iter()
                        .all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_digit()))
                );
                person_bytes += 8
                    + p.name.len()
                    + p.email_address.len()
                    + p.credit_card.len()
                    + p.city.len()
                    + p.state.len()
                    + p.extra.len();
            }
            Event::Auction(a) => {
                assert!(a.item_name.len() < 20 && a.description.len() < 100);
            }
            Event::Bid(b) => {
                bid_bytes += 32 + b.extra.len();
                assert!(b.url.starts_with("https://www.nexmark.com/"), "{b:?}");
                assert!(b.url.contains("/item.htm?query=1"), "{b:?}");
                if HOT_CHANNELS.contains(&b.channel) {
                    hot_channels += 1;
                } else {
                    channel_bids += 1;
                    let number: u64 = b.channel.strip_prefix("channel-").unwrap().parse().unwrap();
                    assert!(number < CHANNELS);
                    with_channel_id += usize::from(b.url.contains("&channel_id="));
                }
            }
        }
    }
    let bids = 20_000 / 50 * 46;
    let person_mean = person_bytes as f64 / persons as f64;
    assert!((190.0..210.0).contains(&person_mean), "{person_mean}");
    let bid_mean = bid_bytes as f64 / bids as f64;
    assert!((98.0..102.0).contains(&bid_mean), "{bid_mean}");
    let hot_share = hot_channels as f64 / bids as f64;
    assert!((0.47..0.53).contains(&hot_share), "{hot_share}");
    let id_share = with_channel_id as f64 / channel_bids as f64;
    assert!((0.85..0.95).contains(&id_share), "{id_share}");
}

#[test]
fn the_hot_auction_collects_half_the_bids() {
    let g = Generator::new(NexmarkConfig::default());
    // Events 10,050..11,650: the newest auction is 1603..1698, so the hot
    // auction is 1600 throughout.
    let mut per_auction = std::collections::HashMap::<i64, u64>::new();
    for n in (10_050..11_650).filter(|&n| EventKind::of(n) == EventKind::Bid) {
        *per_auction.entry(bid(g.event(n)).auction).or_default() += 1;
    }
    let total: u64 = per_auction.values().sum();
    let (&top, &count) = per_auction.iter().max_by_key(|&(a, c)| (c, -a)).unwrap();
    assert_eq!(top, 1600);
    assert!(count * 2 > total, "{count} of {total}");
    assert!(
        per_auction.keys().all(|&a| (1500..=1708).contains(&a)),
        "{per_auction:?}"
    );
}
