//! The event generator: Nexmark's persons, auctions and bids, as the
//! reference generator makes them, from a seed and an event number.
//!
//! It never encodes or writes events (`json`, `load` do).

#[cfg(test)]
mod tests;

use super::rng::{Rng, Stream};

/// Persons, auctions and bids in every [`TOTAL_PROPORTION`] events.
pub const PERSON_PROPORTION: u64 = 1;
pub const AUCTION_PROPORTION: u64 = 3;
pub const BID_PROPORTION: u64 = 46;
pub const TOTAL_PROPORTION: u64 = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION;

/// Ids start here so that queries find matches even in small runs.
pub const FIRST_PERSON_ID: i64 = 1000;
pub const FIRST_AUCTION_ID: i64 = 1000;
pub const FIRST_CATEGORY_ID: i64 = 10;
pub const NUM_CATEGORIES: u64 = 5;

/// How far ahead of the last created person / auction a random reference
/// may point (Nexmark's `PERSON_ID_LEAD`, `AUCTION_ID_LEAD`).
pub const PERSON_ID_LEAD: u64 = 10;
pub const AUCTION_ID_LEAD: u64 = 10;
/// People considered active for bids and auctions (`numActivePeople`).
pub const NUM_ACTIVE_PEOPLE: u64 = 1000;
/// Auctions considered in flight for bids (`numInFlightAuctions`).
pub const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
/// A bid is for a hot auction unless a draw in `0..HOT_AUCTION_RATIO` is 0
/// (`hotAuctionRatio`); likewise hot bidders and hot sellers.
pub const HOT_AUCTION_RATIO: u64 = 2;
pub const HOT_BIDDERS_RATIO: u64 = 4;
pub const HOT_SELLERS_RATIO: u64 = 4;
/// The hot auction / bidder / seller is the first (bidder: second) of the
/// latest batch of this many ids.
const HOT_BATCH: u64 = 100;
/// Average sizes that `extra` pads events to (`avg*ByteSize`).
pub const AVG_PERSON_BYTES: usize = 200;
pub const AVG_AUCTION_BYTES: usize = 500;
pub const AVG_BID_BYTES: usize = 100;
/// Bids come through a hot channel unless a draw in `0..2` is 0; other bids
/// name one of `CHANNELS` numbered channels.
const HOT_CHANNELS_RATIO: u64 = 2;
const CHANNELS: u64 = 10_000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

/// Event time of event 0 unless configured: 2015-07-15T00:00:00Z, the base
/// time of Beam's Nexmark (`NexmarkUtils.BASE_TIME`).
pub const DEFAULT_BASE_TIME_MS: i64 = 1_436_918_400_000;
/// Events per second of event time: the Flink Nexmark suite's TPS.
pub const DEFAULT_RATE: u64 = 10_000_000;
/// Seed unless configured.
pub const DEFAULT_SEED: u64 = 42;

/// What the events depend on besides their number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NexmarkConfig {
    /// Seeds every random choice.
    pub seed: u64,
    /// Events per second of event time (at least 1).
    pub rate: u64,
    /// Event time of event 0, ms since the Unix epoch.
    pub base_time_ms: i64,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        NexmarkConfig {
            seed: DEFAULT_SEED,
            rate: DEFAULT_RATE,
            base_time_ms: DEFAULT_BASE_TIME_MS,
        }
    }
}

/// The three kinds of events, in the order of the topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Person = 0,
    Auction = 1,
    Bid = 2,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [EventKind::Person, EventKind::Auction, EventKind::Bid];

    /// The kind of event number `n`.
    pub fn of(n: u64) -> EventKind {
        let rem = n % TOTAL_PROPORTION;
        if rem < PERSON_PROPORTION {
            EventKind::Person
        } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
            EventKind::Auction
        } else {
            EventKind::Bid
        }
    }

    /// The topic its events are written to.
    pub fn topic(self) -> &'static str {
        match self {
            EventKind::Person => "person",
            EventKind::Auction => "auction",
            EventKind::Bid => "bid",
        }
    }

    fn proportion(self) -> u64 {
        match self {
            EventKind::Person => PERSON_PROPORTION,
            EventKind::Auction => AUCTION_PROPORTION,
            EventKind::Bid => BID_PROPORTION,
        }
    }

    /// Position of this kind's first event within a cycle of 50.
    fn first_in_cycle(self) -> u64 {
        match self {
            EventKind::Person => 0,
            EventKind::Auction => PERSON_PROPORTION,
            EventKind::Bid => PERSON_PROPORTION + AUCTION_PROPORTION,
        }
    }

    /// How many of the events `0..events` are of this kind.
    pub fn count_in(self, events: u64) -> u64 {
        let (cycles, rem) = (events / TOTAL_PROPORTION, events % TOTAL_PROPORTION);
        cycles * self.proportion()
            + rem
                .saturating_sub(self.first_in_cycle())
                .min(self.proportion())
    }

    /// The event number of this kind's `index`-th event (from 0).
    pub fn event_number(self, index: u64) -> u64 {
        (index / self.proportion()) * TOTAL_PROPORTION
            + self.first_in_cycle()
            + index % self.proportion()
    }
}

/// Position of event `n` among the events of its kind (from 0): a person's
/// and an auction's is its id minus 1000.
pub fn kind_index(n: u64) -> u64 {
    let kind = EventKind::of(n);
    (n / TOTAL_PROPORTION) * kind.proportion() + n % TOTAL_PROPORTION - kind.first_in_cycle()
}

/// Nexmark's `lastBase0PersonId`: the newest person id (minus 1000) at
/// event `n`, which is `n`'s own id if `n` is a person.
pub fn last_base0_person_id(n: u64) -> u64 {
    // Event 0 is a person, so there is always one.
    EventKind::Person.count_in(n + 1) - 1
}

/// Nexmark's `lastBase0AuctionId`: the newest auction id (minus 1000) at
/// event `n`, `n`'s own if `n` is an auction; -1 before the first auction.
pub fn last_base0_auction_id(n: u64) -> i64 {
    EventKind::Auction.count_in(n + 1) as i64 - 1
}

/// A person joining the auction site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: i64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: &'static str,
    pub state: &'static str,
    /// Event time, ms since the Unix epoch.
    pub date_time: i64,
    pub extra: String,
}

/// An item put up for auction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auction {
    pub id: i64,
    pub item_name: String,
    pub description: String,
    /// Cents.
    pub initial_bid: i64,
    /// Cents; at least `initial_bid`.
    pub reserve: i64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: i64,
    pub category: i64,
    pub extra: String,
}

/// A bid on an auction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bid<'g> {
    pub auction: i64,
    pub bidder: i64,
    /// Cents.
    pub price: i64,
    pub channel: &'g str,
    pub url: &'g str,
    pub date_time: i64,
    pub extra: String,
}

/// One Nexmark event. Channels and URLs borrow from the [`Generator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'g> {
    Person(Person),
    Auction(Auction),
    Bid(Bid<'g>),
}

impl Event<'_> {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Person(_) => EventKind::Person,
            Event::Auction(_) => EventKind::Auction,
            Event::Bid(_) => EventKind::Bid,
        }
    }

    /// Event time, ms since the Unix epoch.
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }
}

/// Makes events from their numbers. Building one precomputes the 10,004
/// channel URLs (a few hundred microseconds); [`Generator::event`] is then
/// a pure function of the event number and may be called from any thread.
#[derive(Debug, Clone)]
pub struct Generator {
    config: NexmarkConfig,
    /// `(channel, url)` of numbered channels.
    channels: Vec<(String, String)>,
    hot_urls: [String; 4],
}

/// Nexmark's `BidGenerator.getBaseUrl`.
fn base_url(rng: &mut Rng) -> String {
    let mut url = String::from("https://www.nexmark.com/");
    for _ in 0..3 {
        rng.string(5, b'_', &mut url);
        url.push('/');
    }
    url.push_str("item.htm?query=1");
    url
}

impl Generator {
    /// # Panics
    ///
    /// If `config.rate` is 0 (the CLI refuses it before).
    pub fn new(config: NexmarkConfig) -> Generator {
        assert!(config.rate > 0, "the event rate must be positive");
        let channels = (0..CHANNELS)
            .map(|c| {
                let mut rng = Rng::new(config.seed, Stream::ChannelUrl, c);
                let mut url = base_url(&mut rng);
                if rng.below(10) > 0 {
                    let id = (c as i32).reverse_bits().unsigned_abs();
                    url.push_str(&format!("&channel_id={id}"));
                }
                (format!("channel-{c}"), url)
            })
            .collect();
        let hot_urls =
            [0, 1, 2, 3].map(|i| base_url(&mut Rng::new(config.seed, Stream::HotUrl, i)));
        Generator {
            config,
            channels,
            hot_urls,
        }
    }

    pub fn config(&self) -> &NexmarkConfig {
        &self.config
    }

    /// Event time of event `n`: `base_time + floor(n · 1000 / rate)` ms.
    pub fn timestamp_ms(&self, n: u64) -> i64 {
        let offset = u128::from(n) * 1000 / u128::from(self.config.rate);
        self.config
            .base_time_ms
            .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
    }

    /// Event number `n`.
    pub fn event(&self, n: u64) -> Event<'_> {
        let mut rng = Rng::new(self.config.seed, Stream::Event, n);
        let time = self.timestamp_ms(n);
        match EventKind::of(n) {
            EventKind::Person => Event::Person(self.person(n, time, &mut rng)),
            EventKind::Auction => Event::Auction(self.auction(n, time, &mut rng)),
            EventKind::Bid => Event::Bid(self.bid(n, time, &mut rng)),
        }
    }

    fn person(&self, n: u64, time: i64, rng: &mut Rng) -> Person {
        let id = last_base0_person_id(n) as i64 + FIRST_PERSON_ID;
        let first = FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize];
        let last = LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize];
        let name = format!("{first} {last}");
        let mut email_address = String::with_capacity(20);
        rng.string(7, b' ', &mut email_address);
        email_address.push('@');
        rng.string(5, b' ', &mut email_address);
        email_address.push_str(".com");
        let credit_card = format!(
            "{:04} {:04} {:04} {:04}",
            rng.below(10_000),
            rng.below(10_000),
            rng.below(10_000),
            rng.below(10_000)
        );
        let city = US_CITIES[rng.below(US_CITIES.len() as u64) as usize];
        let state = US_STATES[rng.below(US_STATES.len() as u64) as usize];
        let size =
            8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
        let extra = rng.extra(size, AVG_PERSON_BYTES);
        Person {
            id,
            name,
            email_address,
            credit_card,
            city,
            state,
            date_time: time,
            extra,
        }
    }

    /// Nexmark's `nextBase0PersonId`: one of the last 1,000 people, or one
    /// of the next 10 not created yet.
    fn random_base0_person(n: u64, rng: &mut Rng) -> u64 {
        let people = last_base0_person_id(n) + 1;
        let active = people.min(NUM_ACTIVE_PEOPLE);
        people - active + rng.below(active + PERSON_ID_LEAD)
    }

    /// Nexmark's `nextBase0AuctionId`: one of the last 100 auctions, or one
    /// of the next 10 not created yet.
    fn random_base0_auction(n: u64, rng: &mut Rng) -> u64 {
        let newest = last_base0_auction_id(n).max(0) as u64;
        let oldest = newest.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
        oldest + rng.below(newest - oldest + 1 + AUCTION_ID_LEAD)
    }

    fn auction(&self, n: u64, time: i64, rng: &mut Rng) -> Auction {
        let id = last_base0_auction_id(n) + FIRST_AUCTION_ID;
        let seller = if rng.below(HOT_SELLERS_RATIO) > 0 {
            (last_base0_person_id(n) / HOT_BATCH) * HOT_BATCH
        } else {
            Self::random_base0_person(n, rng)
        } as i64
            + FIRST_PERSON_ID;
        let category = FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64;
        let initial_bid = rng.price();
        // Nexmark's nextAuctionLengthMs: on average as long as it takes to
        // create the next 100 auctions.
        let events_for_auctions = NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION / AUCTION_PROPORTION;
        let horizon = self.timestamp_ms(n + events_for_auctions) - time;
        let expires = time + 1 + rng.below(horizon.saturating_mul(2).max(1) as u64) as i64;
        let mut item_name = String::with_capacity(20);
        rng.string(20, b' ', &mut item_name);
        let mut description = String::with_capacity(100);
        rng.string(100, b' ', &mut description);
        let reserve = initial_bid + rng.price();
        let size = 8 + item_name.len() + description.len() + 8 + 8 + 8 + 8 + 8;
        let extra = rng.extra(size, AVG_AUCTION_BYTES);
        Auction {
            id,
            item_name,
            description,
            initial_bid,
            reserve,
            date_time: time,
            expires,
            seller,
            category,
            extra,
        }
    }

    fn bid(&self, n: u64, time: i64, rng: &mut Rng) -> Bid<'_> {
        let auction = if rng.below(HOT_AUCTION_RATIO) > 0 {
            (last_base0_auction_id(n).max(0) as u64 / HOT_BATCH) * HOT_BATCH
        } else {
            Self::random_base0_auction(n, rng)
        } as i64
            + FIRST_AUCTION_ID;
        // The hot bidder is the second of the batch, so that hot bidders
        // and hot sellers differ.
        let bidder = if rng.below(HOT_BIDDERS_RATIO) > 0 {
            (last_base0_person_id(n) / HOT_BATCH) * HOT_BATCH + 1
        } else {
            Self::random_base0_person(n, rng)
        } as i64
            + FIRST_PERSON_ID;
        let price = rng.price();
        let (channel, url) = if rng.below(HOT_CHANNELS_RATIO) > 0 {
            let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
            (HOT_CHANNELS[i], self.hot_urls[i].as_str())
        } else {
            let (c, u) = &self.channels[rng.below(CHANNELS) as usize];
            (c.as_str(), u.as_str())
        };
        let extra = rng.extra(8 + 8 + 8 + 8, AVG_BID_BYTES);
        Bid {
            auction,
            bidder,
            price,
            channel,
            url,
            date_time: time,
            extra,
        }
    }
}
