//! Policies: what may cross between networks, and between containers of a
//! network, in userspace and without a firewall rule.
//!
//! Three layers, each sans-IO:
//! - [`spec`]: the rules users give (`vswitch policy allow`, `policy
//!   egress`, a Kubernetes NetworkPolicy for `policy apply -f`), checked
//!   whole before anything is kept.
//! - [`table`]: the rules compiled against the networks and endpoints they
//!   name ([`PolicyTable`]): which endpoint an address is, where a frame to
//!   another network's address is routed, and [`PolicyTable::check`], the
//!   verdict for the first packet of a flow.
//! - [`flows`]: each worker's bounded, aged flow table ([`Flows`]): the
//!   verdict kept per flow, so replies of an admitted connection pass and
//!   nothing else is judged twice; [`packet`] reads the tuple of a frame.
//!
//! Defaults: nothing crosses between networks; inside a network everything
//! passes unless it is isolated (`--opt isolate=true`) or a NetworkPolicy
//! selects the container; egress passes unless a rule denies it.

pub mod flows;
pub mod packet;
pub mod spec;
pub mod table;

pub use flows::{FlowKey, FlowStats, FlowVerdict, Flows};
pub use packet::FlowPacket;
pub use spec::{
    EgressAction, K8sPeer, K8sRule, LabelExpr, LabelOp, LabelSelector, NetworkPolicy, Peer, Policy,
    PolicyError, PortRange, Proto, Rule, Select,
};
pub use table::{
    Denials, EndpointInput, EpId, NameId, NetworkInput, PolicyTable, Verdict, Who, DEFAULT_DENY,
    ISOLATED,
};

#[cfg(test)]
mod tests;
