//! The world the property tests drive: three vats, four sessions, a small runtime per
//! vat that answers, settles, forwards and drops as the operations say, and a model of
//! the wire (which exports each peer holds, where each call is going) that every frame
//! is checked against on its way.
//!
//! Vat B sits in the middle, with a session to A (sessions 0 and 1 of the world) and
//! one to C (sessions 3 and 2). A and C bootstrap B's object (or an unknown one), and
//! every vat calls the references it holds, pipelines on answers, passes its own
//! objects, promises and the peer's references, drops references; every vat answers
//! what it is delivered with data, an error, a new object, a reference it holds or a
//! new promise, and settles its promises at random. B's tiny runtime forwards calls the
//! session hands it for A's or C's references (`Event::Deliver` to an import, when an
//! answer resolved to one), and for references of the other pair through proxy
//! objects. Frames move one at a time, FIFO per direction, in random order.
//!
//! It must stay deterministic: what is sent depends only on the operations (nothing
//! iterates a `HashMap` to decide it), so that proptest can shrink and replay a failure.
//! It reads no clock and does no I/O.

use std::collections::{BTreeSet, HashMap, HashSet};

use bytes::Bytes;

use super::super::{CborLimits, Message, S, new_session, swiss};
use super::Op;
use super::wire::Wire;
use crate::broken::{Broken, BrokenKind};
use crate::limits::Limits;
use crate::proto::{
    AnswerId, Call, Event, ImportId, InCap, InPayload, LocalTarget, OutCap, OutPayload, QuestionId,
    SessionStats,
};
use crate::wire::MIN_QUESTIONS;
use crate::wire::frame;

pub(super) const VA: usize = 0;
pub(super) const VB: usize = 1;
pub(super) const VC: usize = 2;
/// The vat each session belongs to: 0 is A's to B, 1 B's to A, 2 B's to C, 3 C's.
const VAT_OF: [usize; 4] = [VA, VB, VB, VC];
/// B's bootstrap object, under `swiss(1)`.
const ROOT: u32 = 1;
/// A swiss number B does not know.
const UNKNOWN: u8 = 9;
/// The export limit of the cases that run with a small one.
const SMALL_EXPORTS: usize = 4;
/// A message loop is a bug: no drive takes more steps than this.
const STEP_LIMIT: usize = 100_000;

fn peer_of(s: usize) -> usize {
    s ^ 1
}

/// The limits of every session: the smallest question window a peer may announce, and
/// with `small_exports`, room for only `SMALL_EXPORTS` exports.
fn limits(small_exports: bool) -> Limits {
    let max_exports = if small_exports {
        SMALL_EXPORTS
    } else {
        Limits::default().max_exports
    };
    Limits {
        max_inbound_questions: MIN_QUESTIONS,
        max_exports,
        ..Limits::default()
    }
}

/// Where a call's answer goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reply {
    None,
    Answer(usize, AnswerId),
}

#[derive(Debug)]
enum Settled {
    Object(u32),
    Data,
    Broken(Broken),
}

#[derive(Debug)]
enum Obj {
    /// Records what it is delivered; calls wait in `pending` for an answer.
    Real,
    /// Forwards to a reference of one session; holds one handle on it.
    Proxy { sess: usize, import: ImportId },
    /// A local promise: buffers calls until it settles, then forwards them.
    Promise {
        exported: BTreeSet<usize>,
        pending: Vec<(Bytes, Reply)>,
        settled: Option<Settled>,
    },
}

impl Obj {
    /// The object a settled promise forwards to.
    fn settled_to(&self) -> Option<u32> {
        match self {
            Obj::Promise {
                settled: Some(Settled::Object(o)),
                ..
            } => Some(*o),
            _ => None,
        }
    }
}

/// A reference at the session level: an import or an answer of one session. Calls on
/// one keep their order (E-order), whatever handle they went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Import(usize, ImportId),
    Answer(usize, QuestionId),
}

/// A reference user code holds (one handle, or one pipelined question ref).
#[derive(Debug)]
struct URef {
    vat: usize,
    id: u32,
    target: Target,
}

/// A question user code asked and waits on.
#[derive(Debug)]
struct Asked {
    vat: usize,
    /// Asked of an unknown bootstrap object, directly or pipelined: it must break with
    /// `unknown_object`.
    doomed: bool,
}

/// A call delivered to a real object, waiting for its answer.
#[derive(Debug)]
struct Pending {
    vat: usize,
    reply: Reply,
    /// The user references made from the call's arguments.
    args: Vec<u32>,
}

/// How a vat answers a call.
#[derive(Debug, Clone, Copy)]
pub(super) enum How {
    Data,
    Error,
    Object,
    Held(usize),
    Promise,
}

/// Three vats, four sessions, their runtimes and the model of the wire.
#[derive(Default)]
pub(super) struct World {
    s: Vec<S>,
    limits: Limits,
    /// The cases with a small export limit, where results past it break (`too_large`).
    small_exports: bool,
    next_q: [u64; 4],
    objects: HashMap<u32, (usize, Obj)>,
    next_obj: u32,
    refs: Vec<URef>,
    next_ref: u32,
    /// Calls delivered to real objects, waiting for an answer.
    pending: Vec<Pending>,
    /// Resolvers of the questions user code asked.
    asked: HashMap<u32, Asked>,
    /// Questions asked of an unknown bootstrap object, or pipelined on one.
    doomed: HashSet<(usize, QuestionId)>,
    /// Resolvers of forwarded questions, and where their answer goes.
    forwards: HashMap<u32, Reply>,
    next_resolver: u32,
    /// Each reference's key in call tags, and the sequence number of its next call.
    ref_keys: HashMap<(usize, Target), (u32, u32)>,
    next_ref_key: u32,
    /// E-order: the last sequence number delivered per reference key.
    last_seq: HashMap<u32, u32>,
    /// Handles the runtime holds, per (session, import).
    handles: HashMap<(usize, ImportId), u32>,
    /// Promises imported, per (session, import), and whether they settled.
    promises_in: HashMap<(usize, ImportId), bool>,
    /// Handles to let go of once the answer being given holds its own.
    pending_drops: Vec<(usize, ImportId)>,
    /// The wire as the peers see it, which every frame is checked against.
    wire: Wire,
    /// Answers whose asker cancelled them (`Event::Cancel`): the session answered them
    /// already, and the method's own answer, when it comes, goes nowhere.
    cancelled: HashSet<(usize, AnswerId)>,
}

impl World {
    pub(super) fn new(small_exports: bool) -> World {
        let limits = limits(small_exports);
        let mut w = World {
            s: (0..4).map(|_| new_session(limits.clone())).collect(),
            limits,
            small_exports,
            next_obj: ROOT,
            ..World::default()
        };
        assert_eq!(w.new_object(VB, Obj::Real), ROOT);
        w
    }

    fn new_object(&mut self, vat: usize, obj: Obj) -> u32 {
        let o = self.next_obj;
        self.next_obj += 1;
        self.objects.insert(o, (vat, obj));
        o
    }

    fn new_promise(&mut self, vat: usize) -> u32 {
        self.new_object(
            vat,
            Obj::Promise {
                exported: BTreeSet::new(),
                pending: Vec::new(),
                settled: None,
            },
        )
    }

    fn resolver(&mut self) -> u32 {
        self.next_resolver += 1;
        self.next_resolver
    }

    fn question(&mut self, s: usize) -> QuestionId {
        self.next_q[s] += 1;
        QuestionId(self.next_q[s])
    }

    fn add_ref(&mut self, vat: usize, target: Target) {
        self.next_ref += 1;
        self.refs.push(URef {
            vat,
            id: self.next_ref,
            target,
        });
    }

    /// Index of the `k`-th reference of `vat`.
    fn pick_ref(&self, vat: usize, k: usize, imports_only: bool) -> Option<usize> {
        let mine: Vec<usize> = (0..self.refs.len())
            .filter(|&i| {
                self.refs[i].vat == vat
                    && (!imports_only || matches!(self.refs[i].target, Target::Import(..)))
            })
            .collect();
        match k {
            _ if mine.is_empty() => None,
            usize::MAX => mine.last().copied(),
            _ => Some(mine[k % mine.len()]),
        }
    }

    /// A reference of `vat` to answer a call of session `s` with: by `h`, the
    /// call's own argument (an echo), one of `s`'s own (both go home, and the
    /// peer's calls on the answer are forwarded to them), or any.
    fn pick_held(&self, vat: usize, h: usize, s: usize, args: &[u32]) -> Option<usize> {
        let home: Vec<usize> = (0..self.refs.len())
            .filter(|&i| self.refs[i].vat == vat)
            .filter(|&i| matches!(self.refs[i].target, Target::Import(hs, _) if hs == s))
            .collect();
        let echo = home.iter().find(|&&i| args.contains(&self.refs[i].id));
        match (h % 3, echo) {
            (0, Some(&i)) => Some(i),
            (0 | 1, _) if !home.is_empty() => Some(home[h / 3 % home.len()]),
            _ => self.pick_ref(vat, h / 3, true),
        }
    }

    fn sess_of(vat: usize) -> usize {
        if vat == VA { 0 } else { 3 }
    }

    // ---- handles ----

    /// The session handed the runtime these references: count their handles.
    fn got(&mut self, s: usize, caps: &[InCap<u32>]) {
        for cap in caps {
            match *cap {
                InCap::Import(i) => {
                    let held = self.handles.entry((s, i)).or_default();
                    if *held == 0 {
                        // Handed over afresh as an object: a promise this runtime held
                        // under the same id and let go of before it settled is gone (the
                        // exporter sends a promise that settled since as an object).
                        self.promises_in.remove(&(s, i));
                    }
                    *held += 1;
                }
                InCap::Promise(i) => {
                    *self.handles.entry((s, i)).or_default() += 1;
                    self.promises_in.entry((s, i)).or_insert(false);
                }
                InCap::ThirdParty(..) => unreachable!("the world introduces nothing"),
                InCap::Local(o) => {
                    let (vat, _) = self.objects[&o];
                    assert_eq!(vat, VAT_OF[s], "object {o} came home to the wrong vat");
                }
            }
        }
    }

    fn drop_handle(&mut self, s: usize, i: ImportId) {
        let n = self
            .handles
            .get_mut(&(s, i))
            .expect("a handle the runtime holds");
        assert!(*n > 0, "handle on {i} of session {s} dropped twice");
        *n -= 1;
        self.s[s].drop_import(i);
    }

    fn drop_caps(&mut self, s: usize, caps: Vec<InCap<u32>>) {
        for cap in caps {
            if let InCap::Import(i) | InCap::Promise(i) = cap {
                self.drop_handle(s, i);
            }
        }
    }

    /// User code of `vat` keeps the references (each holds its handle); returns
    /// their ids.
    fn keep_caps(&mut self, vat: usize, s: usize, caps: Vec<InCap<u32>>) -> Vec<u32> {
        let mut ids = Vec::new();
        for cap in caps {
            if let InCap::Import(i) | InCap::Promise(i) = cap {
                self.add_ref(vat, Target::Import(s, i));
                ids.push(self.next_ref);
            }
        }
        ids
    }

    // ---- user code ----

    /// `vat` (A or C) bootstraps B's object, or with `!known` one B does not know,
    /// keeping `refs` pipelined handles and perhaps waiting for the answer.
    fn bootstrap(&mut self, vat: usize, known: bool, refs: u32, resolver: bool) {
        let s = Self::sess_of(vat);
        let q = self.question(s);
        let r = resolver.then(|| self.resolver());
        if let Some(r) = r {
            let doomed = !known;
            self.asked.insert(r, Asked { vat, doomed });
        }
        if !known {
            self.doomed.insert((s, q));
        }
        for _ in 0..refs {
            self.add_ref(vat, Target::Answer(s, q));
        }
        let n = if known { 1 } else { UNKNOWN };
        self.s[s].bootstrap(q, swiss(n), r, refs);
    }

    /// The data of the next call on reference `target` of session `s`, by `vat`: the
    /// vat, the reference's key and the call's sequence number on it, for the E-order
    /// check where the call is delivered; and that sequence number. Unique per call.
    fn tag(&mut self, vat: usize, s: usize, target: Target) -> (Bytes, u32) {
        let fresh = self.next_ref_key + 1;
        let (key, seq) = self.ref_keys.entry((s, target)).or_insert((fresh, 0));
        if *key == fresh {
            self.next_ref_key = fresh;
        }
        let (key, this) = (*key, *seq);
        *seq += 1;
        let mut tag = vec![u8::try_from(vat).unwrap()];
        tag.extend_from_slice(&key.to_be_bytes());
        tag.extend_from_slice(&this.to_be_bytes());
        (tag.into(), this)
    }

    fn send(&mut self, idx: usize, mode: u8, cap: u8) {
        let (ask, pipeline, wait) = (
            mode > 0,
            matches!(mode, 2 | 3 | 5 | 6),
            !matches!(mode, 4 | 5),
        );
        let quiet = mode >= 5;
        let URef { vat, target, .. } = self.refs[idx];
        let (s, local_target, doomed) = match target {
            Target::Import(s, i) => (s, LocalTarget::Import(i), false),
            Target::Answer(s, q) => (s, LocalTarget::Answer(q), self.doomed.contains(&(s, q))),
        };
        let (tag, seq) = self.tag(vat, s, target);
        let caps = match cap {
            1 | 2 => vec![OutCap::Local(self.new_object(vat, Obj::Real))],
            4 => {
                let p = self.new_promise(vat);
                vec![self.out_local(p, s)]
            }
            3 => match self.pick_ref(vat, seq as usize, true) {
                Some(home) => match self.refs[home].target {
                    Target::Import(hs, i) if hs == s => vec![OutCap::Import(i)],
                    _ => vec![],
                },
                None => vec![],
            },
            _ => vec![],
        };
        let (question, resolver) = if ask {
            let q = self.question(s);
            if doomed {
                self.doomed.insert((s, q));
            }
            if pipeline {
                self.add_ref(vat, Target::Answer(s, q));
            }
            if !wait {
                // A result nobody waits for: the session releases what it brings.
                (Some(q), None)
            } else {
                let r = self.resolver();
                self.asked.insert(r, Asked { vat, doomed });
                (Some(q), Some(r))
            }
        } else {
            (None, None)
        };
        self.wire.call(s, &tag, &caps);
        self.s[s].send(Call {
            quiet,
            target: local_target,
            method: "m".to_owned(),
            payload: OutPayload {
                shape: None,
                data: tag,
                caps,
            },
            question,
            resolver,
            pipeline_refs: u32::from(ask && pipeline),
            deadline: None,
        });
        if let (6, Some(q)) = (mode, question) {
            // Asked for at once: still held, it goes out not quiet; sent, a
            // `want_return` follows it.
            self.s[s].want_return(q);
        }
    }

    fn drop_ref(&mut self, idx: usize) {
        match self.refs.remove(idx).target {
            Target::Import(s, i) => self.drop_handle(s, i),
            Target::Answer(s, q) => self.s[s].drop_question_ref(q),
        }
    }

    /// Answers one of the four calls delivered last (bursts aside, answers then
    /// reach calls whose promises are still in use).
    fn answer(&mut self, k: usize, how: How) {
        let n = self.pending.len();
        let Pending { vat, reply, args } = self.pending.remove(n - 1 - k % n.min(4));
        let Reply::Answer(s, _) = reply else {
            unreachable!("only calls with an answer wait")
        };
        let result = match how {
            How::Data => Ok(OutPayload::data(vec![0xaa])),
            How::Error => Err(Broken::failed("no")),
            How::Object => Ok(OutPayload::single_cap(OutCap::Local(
                self.new_object(vat, Obj::Real),
            ))),
            How::Promise => {
                let p = self.new_promise(vat);
                Ok(OutPayload::single_cap(self.out_local(p, s)))
            }
            How::Held(h) => match self.pick_held(vat, h, s, &args) {
                Some(idx) => {
                    let Target::Import(hs, i) = self.refs[idx].target else {
                        unreachable!()
                    };
                    if hs == s {
                        // The peer's own reference goes home; the answer then
                        // resolves to it, and the peer's calls on the answer are
                        // forwarded back through it. A method that echoes its
                        // argument keeps nothing: the runtime drops it once answered.
                        if h % 3 == 0 && args.contains(&self.refs[idx].id) {
                            let id = self.refs[idx].id;
                            let payload = OutPayload::single_cap(OutCap::Import(i));
                            self.reply(reply, Ok(payload));
                            let idx = self.refs.iter().position(|r| r.id == id).unwrap();
                            return self.drop_ref(idx);
                        }
                        Ok(OutPayload::single_cap(OutCap::Import(i)))
                    } else {
                        // A reference of the other pair travels as a proxy, which
                        // takes over the user's handle.
                        self.refs.remove(idx);
                        let proxy = self.new_object(
                            vat,
                            Obj::Proxy {
                                sess: hs,
                                import: i,
                            },
                        );
                        Ok(OutPayload::single_cap(OutCap::Local(proxy)))
                    }
                }
                None => Ok(OutPayload::data(vec![0xab])),
            },
        };
        self.reply(reply, result);
    }

    /// How a local object travels to session `s`'s peer.
    fn out_local(&mut self, o: u32, s: usize) -> OutCap<u32> {
        match &mut self.objects.get_mut(&o).unwrap().1 {
            Obj::Promise {
                exported,
                settled: None,
                ..
            } => {
                exported.insert(s);
                OutCap::Promise(o)
            }
            _ => OutCap::Local(o),
        }
    }

    fn reply(&mut self, reply: Reply, result: Result<OutPayload<u32>, Broken>) {
        if let Reply::Answer(s, a) = reply {
            self.answer_as(s, a, result);
        }
    }

    /// Session `s` answers `a`, telling the wire model what the answer carries.
    fn answer_as(&mut self, s: usize, a: AnswerId, result: Result<OutPayload<u32>, Broken>) {
        if self.cancelled.remove(&(s, a)) {
            return;
        }
        if let Ok(p) = &result {
            self.wire.answer(s, a, p);
        }
        self.s[s].answer(a, result);
    }

    fn unresolved(&self) -> Vec<u32> {
        let mut ps: Vec<u32> = self
            .objects
            .iter()
            .filter(|(_, (_, o))| matches!(o, Obj::Promise { settled: None, .. }))
            .map(|(&o, _)| o)
            .collect();
        ps.sort_unstable();
        ps
    }

    fn resolve(&mut self, p: u32, how: u8) {
        let vat = self.objects[&p].0;
        let (settled, result) = match how {
            0 => (Settled::Object(self.new_object(vat, Obj::Real)), None),
            // A new promise: calls to `p` then wait on that one.
            1 => (Settled::Object(self.new_promise(vat)), None),
            2 => (Settled::Data, Some(Ok(OutPayload::data(vec![0xbb])))),
            _ => {
                let b = Broken::failed("gave up");
                (Settled::Broken(b.clone()), Some(Err(b)))
            }
        };
        let Some((
            _,
            Obj::Promise {
                exported,
                pending,
                settled: state,
            },
        )) = self.objects.get_mut(&p)
        else {
            unreachable!()
        };
        assert!(state.is_none(), "promise {p} settled twice");
        let exported = std::mem::take(exported);
        let pending = std::mem::take(pending);
        *state = Some(settled);
        for s in exported {
            let result = match (&result, self.objects[&p].1.settled_to()) {
                (Some(r), _) => r.clone(),
                (None, Some(o)) => Ok(OutPayload::single_cap(self.out_local(o, s))),
                (None, None) => unreachable!(),
            };
            if let Ok(payload) = &result {
                self.wire.resolve(s, p, payload);
            }
            self.s[s].resolve_export(&p, result);
        }
        for (data, reply) in pending {
            self.deliver(p, 0, data, Vec::new(), reply);
        }
    }

    // ---- the runtime ----

    /// A call reaches local object `o` (its references came through session `s`).
    fn deliver(&mut self, o: u32, s: usize, data: Bytes, caps: Vec<InCap<u32>>, reply: Reply) {
        enum Kind {
            Real,
            Proxy(usize, ImportId),
            Waiting,
            Settled(u32),
            Broken(Broken),
        }
        let (vat, obj) = self.objects.get(&o).expect("a live object");
        let vat = *vat;
        let kind = match obj {
            Obj::Real => Kind::Real,
            &Obj::Proxy { sess, import } => Kind::Proxy(sess, import),
            Obj::Promise { settled, .. } => match settled {
                None => Kind::Waiting,
                Some(Settled::Object(r)) => Kind::Settled(*r),
                Some(Settled::Data) => Kind::Broken(Broken::new(BrokenKind::NotAnObject, "data")),
                Some(Settled::Broken(b)) => Kind::Broken(b.clone()),
            },
        };
        match kind {
            Kind::Real => {
                if let [_, a, b, c, d, e, f, g, h] = data[..] {
                    let r = u32::from_be_bytes([a, b, c, d]);
                    let seq = u32::from_be_bytes([e, f, g, h]);
                    if let Some(&last) = self.last_seq.get(&r) {
                        assert!(seq > last, "E-order: ref {r} delivered {seq} after {last}");
                    }
                    self.last_seq.insert(r, seq);
                } else {
                    panic!("not a tagged call: {data:?}");
                }
                let args = self.keep_caps(vat, s, caps);
                if reply != Reply::None {
                    self.pending.push(Pending { vat, reply, args });
                }
            }
            Kind::Proxy(sess, import) => {
                self.drop_caps(s, caps);
                self.forward(sess, import, data, reply);
            }
            Kind::Waiting => {
                self.drop_caps(s, caps);
                let Some((_, Obj::Promise { pending, .. })) = self.objects.get_mut(&o) else {
                    unreachable!()
                };
                pending.push((data, reply));
            }
            Kind::Settled(r) => {
                self.drop_caps(s, caps);
                self.deliver(r, s, data, Vec::new(), reply);
            }
            Kind::Broken(b) => {
                self.drop_caps(s, caps);
                self.reply(reply, Err(b));
            }
        }
    }

    /// Sends a call on through import `i` of session `s`.
    fn forward(&mut self, s: usize, i: ImportId, data: Bytes, reply: Reply) {
        let (question, resolver) = match reply {
            Reply::None => (None, None),
            Reply::Answer(..) => {
                let q = self.question(s);
                let r = self.resolver();
                self.forwards.insert(r, reply);
                (Some(q), Some(r))
            }
        };
        self.s[s].send(Call {
            quiet: false,
            target: LocalTarget::Import(i),
            method: "m".to_owned(),
            payload: OutPayload::data(data),
            question,
            resolver,
            pipeline_refs: 0,
            deadline: None,
        });
    }

    /// A forwarded call's result, from session `s_in`, answers a call of `s_out`.
    fn pass_on(&mut self, s_in: usize, s_out: usize, p: InPayload<u32>) -> OutPayload<u32> {
        let mut caps = Vec::new();
        let mut then_drop = Vec::new();
        for cap in p.caps {
            caps.push(match cap {
                InCap::Local(o) => self.out_local(o, s_out),
                InCap::Import(i) | InCap::Promise(i) if s_in == s_out => {
                    then_drop.push(i);
                    OutCap::Import(i)
                }
                InCap::ThirdParty(..) => unreachable!("the world introduces nothing"),
                InCap::Import(i) | InCap::Promise(i) => {
                    let vat = VAT_OF[s_out];
                    OutCap::Local(self.new_object(
                        vat,
                        Obj::Proxy {
                            sess: s_in,
                            import: i,
                        },
                    ))
                }
            });
        }
        // The session holds what its answer needs; the runtime lets go after it.
        self.pending_drops
            .extend(then_drop.into_iter().map(|i| (s_in, i)));
        OutPayload {
            shape: None,
            data: p.data,
            caps,
        }
    }

    fn handle(&mut self, s: usize, ev: Event<u32, u32>) {
        match ev {
            Event::Deliver {
                target,
                payload,
                answer,
                ..
            } => {
                self.wire.delivered(s, &target, &payload.data);
                self.got(s, &payload.caps);
                let reply = answer.map_or(Reply::None, |a| Reply::Answer(s, a));
                match target {
                    InCap::Local(o) => {
                        assert_eq!(
                            self.objects[&o].0, VAT_OF[s],
                            "delivery to a foreign object"
                        );
                        self.deliver(o, s, payload.data, payload.caps, reply);
                    }
                    InCap::ThirdParty(..) => unreachable!("the world introduces nothing"),
                    InCap::Import(i) | InCap::Promise(i) => {
                        // An answer of ours resolved to the peer's reference.
                        self.got(s, &[InCap::Import(i)]);
                        self.drop_caps(s, payload.caps);
                        self.forward(s, i, payload.data, reply);
                        self.drop_handle(s, i);
                    }
                }
            }
            Event::Bootstrap { answer, swiss: n } => {
                assert_eq!(VAT_OF[s], VB, "a bootstrap reached session {s}");
                let result = if n == swiss(1) {
                    Ok(OutPayload::single_cap(OutCap::Local(ROOT)))
                } else {
                    assert_eq!(n, swiss(UNKNOWN));
                    Err(Broken::unknown_object())
                };
                self.answer_as(s, answer, result);
            }
            Event::Return { resolver, result } => {
                if let Ok(p) = &result {
                    self.got(s, &p.caps);
                }
                if let Some(reply) = self.forwards.remove(&resolver) {
                    let Reply::Answer(s_out, _) = reply else {
                        unreachable!()
                    };
                    let result = result.map(|p| self.pass_on(s, s_out, p));
                    self.reply(reply, result);
                    for (s, i) in std::mem::take(&mut self.pending_drops) {
                        self.drop_handle(s, i);
                    }
                } else {
                    let Asked { vat, doomed } = self
                        .asked
                        .remove(&resolver)
                        .expect("one return per question");
                    match result {
                        Ok(p) => {
                            assert!(!doomed, "a call on an unknown object returned {p:?}");
                            self.keep_caps(vat, s, p.caps);
                        }
                        Err(b) => {
                            // Only what a program did breaks a call: an error it gave,
                            // data where an object was wanted, an unknown swiss number
                            // (and nothing else there); past a small export limit, too
                            // many references.
                            let given = if doomed {
                                b.kind() == BrokenKind::UnknownObject
                            } else {
                                matches!(b.kind(), BrokenKind::Failed | BrokenKind::NotAnObject)
                            };
                            let too_many = self.small_exports && b.kind() == BrokenKind::TooLarge;
                            // The program dropped every handle on a question before its
                            // answer came, having sent nothing on it: cancelled.
                            let cancelled = b.kind() == BrokenKind::Cancelled;
                            assert!(
                                given || too_many || cancelled,
                                "a call broke for no reason: {b:?}"
                            );
                        }
                    }
                }
            }
            Event::Resolved { import, result } => {
                // Reported only for a reference the runtime was handed (perhaps as
                // a settled one, after the promise; perhaps dropped since, by the
                // handling of an earlier event).
                assert!(
                    self.handles.contains_key(&(s, import)),
                    "settlement of {import} of session {s}, never handed out"
                );
                let settled = self.promises_in.entry((s, import)).or_default();
                assert!(!*settled, "promise {import} of session {s} settled twice");
                *settled = true;
                if let Ok(p) = result {
                    self.got(s, &p.caps);
                    self.keep_caps(VAT_OF[s], s, p.caps);
                }
            }
            Event::Pong { .. } => {}
            Event::Cancel { answer } => {
                self.cancelled.insert((s, answer));
            }
            other => panic!("session {s}: {other:?}"),
        }
    }

    fn events(&mut self) {
        for _ in 0..STEP_LIMIT {
            let mut any = false;
            for s in 0..4 {
                while let Some(ev) = self.s[s].poll_event() {
                    any = true;
                    self.handle(s, ev);
                }
            }
            if !any {
                return;
            }
        }
        panic!("events did not settle");
    }

    /// Moves one frame from session `s` to its peer, through the codec and the framing,
    /// checking it against the model of the wire first.
    fn step(&mut self, s: usize) -> bool {
        let Some(msg) = self.s[s].poll_transmit() else {
            return false;
        };
        let to = peer_of(s);
        self.wire.see(s, to, &msg);
        let mut buf = Vec::new();
        msg.encode_frame(&mut buf).unwrap();
        let span = frame::next_frame(&buf, self.limits.max_frame)
            .expect("within the frame limit")
            .expect("a whole frame");
        let body = &buf[span.start..span.end];
        assert_eq!(Message::decode(body, &CborLimits::default()).unwrap(), msg);
        self.s[to].handle_frame(body);
        self.events();
        true
    }

    fn flush(&mut self) {
        for _ in 0..STEP_LIMIT {
            let mut moved = false;
            for s in 0..4 {
                moved |= self.step(s);
            }
            if !moved {
                return;
            }
        }
        panic!("the world did not settle");
    }

    /// After every step: no session closed, no table past its limit.
    pub(super) fn check(&self) {
        let l = &self.limits;
        for (s, session) in self.s.iter().enumerate() {
            assert!(!session.is_closed(), "session {s} closed");
            let st = session.stats();
            assert!(st.answers <= l.max_inbound_questions, "session {s}: {st:?}");
            assert!(st.imports <= l.max_imports && st.exports <= l.max_exports);
        }
    }

    /// Applies one operation, then lets every runtime handle what it caused.
    pub(super) fn apply(&mut self, op: &Op) {
        match *op {
            Op::Bootstrap {
                c,
                known,
                refs,
                resolver,
            } => self.bootstrap(if c { VC } else { VA }, known, refs, resolver),
            Op::Send { vat, r, mode, cap } => {
                // Half the time the newest reference: the one just obtained.
                let r = if r % 2 == 0 { usize::MAX } else { r / 2 };
                match self.pick_ref(vat, r, false) {
                    Some(idx) => self.send(idx, mode, cap),
                    // B has no bootstrap to ask for: it calls what it was given.
                    None if vat != VB => self.bootstrap(vat, true, 1, true),
                    None => {}
                }
            }
            Op::Burst { c, r } => {
                let vat = if c { VC } else { VA };
                if let Some(idx) = self.pick_ref(vat, r, false) {
                    // Two bursts pass the peer's question limit: flow control.
                    for _ in 0..33 {
                        self.send(idx, 1, 0);
                    }
                }
            }
            Op::Answer { k, how } => {
                if !self.pending.is_empty() {
                    self.answer(k, how);
                }
            }
            Op::Resolve { k, how } => {
                let ps = self.unresolved();
                if !ps.is_empty() {
                    self.resolve(ps[k % ps.len()], how);
                }
            }
            Op::Drop { r } => {
                if !self.refs.is_empty() {
                    self.drop_ref(r % self.refs.len());
                }
            }
            Op::Pump { s, n } => {
                for _ in 0..n {
                    self.step(s);
                }
            }
            Op::Flush => self.flush(),
        }
        self.events();
    }

    /// Answers and settles everything, drops every reference, and checks that every
    /// question and promise settled once, every call to an export was delivered, and
    /// every table emptied, at both ends of the wire.
    pub(super) fn finish(&mut self) {
        self.flush();
        for _ in 0..1000 {
            if self.pending.is_empty() && self.unresolved().is_empty() {
                break;
            }
            while !self.pending.is_empty() {
                self.answer(0, How::Data);
                self.events();
            }
            for p in self.unresolved() {
                self.resolve(p, 2);
                self.events();
            }
            self.flush();
        }
        assert!(self.pending.is_empty() && self.unresolved().is_empty());
        assert!(self.asked.is_empty(), "unanswered: {:?}", self.asked);
        assert!(self.forwards.is_empty(), "unanswered: {:?}", self.forwards);
        for (key, settled) in &self.promises_in {
            let held = self.handles.get(key).copied().unwrap_or(0);
            assert!(*settled || held == 0, "promise {key:?} never settled");
        }
        while let Some(r) = self.refs.pop() {
            match r.target {
                Target::Import(s, i) => self.drop_handle(s, i),
                Target::Answer(s, q) => self.s[s].drop_question_ref(q),
            }
        }
        // In object order: what is sent must not depend on a `HashMap`'s order.
        let mut proxies: Vec<(u32, usize, ImportId)> = self
            .objects
            .iter()
            .filter_map(|(&id, (_, o))| match *o {
                Obj::Proxy { sess, import } => Some((id, sess, import)),
                _ => None,
            })
            .collect();
        proxies.sort_unstable();
        for (_, s, i) in proxies {
            self.drop_handle(s, i);
        }
        self.events();
        self.flush();
        self.check();
        for (s, session) in self.s.iter().enumerate() {
            assert_eq!(session.stats(), SessionStats::default(), "session {s}");
        }
        assert!(self.handles.values().all(|&n| n == 0), "{:?}", self.handles);
        self.wire.finish();
    }
}
