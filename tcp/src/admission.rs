//! Who may hold a connection: the worker's total and each client
//! address's share, as limits the operator sets (`[tcp]`). A connection
//! admitted holds a [`Ticket`]; dropping it gives the place back.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use xdpdns_common::config::TcpLimits;

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The worker has `max_connections` open.
    Total,
    /// This client has `max_connections_per_client` open.
    Client,
}

#[derive(Debug, Default)]
struct Places {
    open: u32,
    per_client: HashMap<IpAddr, u32>,
}

/// The open connections, by client.
#[derive(Debug, Clone, Default)]
pub struct Admission(Rc<RefCell<Places>>);

/// A connection's place; given back on drop.
#[derive(Debug)]
pub struct Ticket {
    places: Admission,
    ip: IpAddr,
}

impl Admission {
    /// A place for a connection from `ip` under `limits`, or why not.
    pub fn admit(&self, ip: IpAddr, limits: &TcpLimits) -> Result<Ticket, Refusal> {
        let mut p = self.0.borrow_mut();
        if p.open >= limits.max_connections {
            return Err(Refusal::Total);
        }
        let mine = p.per_client.entry(ip).or_insert(0);
        if *mine >= limits.max_connections_per_client {
            return Err(Refusal::Client);
        }
        *mine += 1;
        p.open += 1;
        Ok(Ticket {
            places: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> u32 {
        self.0.borrow().open
    }

    /// Client addresses with a connection open.
    pub fn clients(&self) -> usize {
        self.0.borrow().per_client.len()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut p = self.places.0.borrow_mut();
        p.open = p.open.saturating_sub(1);
        if let Some(n) = p.per_client.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                p.per_client.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: u32, per_client: u32) -> TcpLimits {
        TcpLimits {
            max_connections: total,
            max_connections_per_client: per_client,
            max_queries_per_connection: 1,
            max_connection_duration_ms: 1000,
            idle_timeout_ms: 1000,
            io_timeout_ms: 1000,
            max_in_flight_per_connection: 1,
            backend_connections: 1,
        }
    }

    #[test]
    fn a_client_gets_its_share_and_the_total_holds() {
        let a = Admission::default();
        let l = limits(3, 2);
        let x: IpAddr = "192.0.2.1".parse().unwrap();
        let y: IpAddr = "192.0.2.2".parse().unwrap();
        let t1 = a.admit(x, &l).unwrap();
        let t2 = a.admit(x, &l).unwrap();
        assert_eq!(a.admit(x, &l).unwrap_err(), Refusal::Client);
        let t3 = a.admit(y, &l).unwrap();
        assert_eq!(a.admit(y, &l).unwrap_err(), Refusal::Total);
        assert_eq!((a.open(), a.clients()), (3, 2));
        drop(t1);
        let _t4 = a.admit(x, &l).expect("a place given back is taken again");
        drop((t2, t3));
        assert_eq!(
            (a.open(), a.clients()),
            (1, 1),
            "emptied clients are forgotten"
        );
    }
}
