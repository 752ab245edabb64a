// SPDX-License-Identifier: GPL-2.0
/* turnd's kernel data path: established UDP channels (RFC 8656 §12), relayed at tc ingress.
 *
 * Client -> peer: a ChannelData datagram to a listener whose (5-tuple, channel) userspace
 * installed in `c2p` leaves as a UDP datagram from the relayed address to the peer.
 * Peer -> client: a datagram from a peer to a relay port installed in `p2c` leaves as
 * ChannelData (not padded: RFC 8656 §12.5 pads only over TCP/TLS) from the listener to the client.
 *
 * Everything else returns TC_ACT_UNSPEC (TCX_NEXT): the packet goes on, untouched, to the next
 * program and then to turnd's socket, so userspace keeps full behaviour. Packets this program
 * passes on include STUN, unknown or uninstalled flows, IP options, fragments, IPv6 extension
 * headers, GSO/GRO aggregates, zero UDP checksums, padded ChannelData, payloads over
 * MAX_PAYLOAD, datagrams that would not fit the egress MTU, and a datagram for this host that
 * came in on another interface than lo (see deliverable()).
 *
 * The payload moves by 4 bytes inside the packet instead of the headers: an offloaded
 * (CHECKSUM_PARTIAL) checksum is computed from csum_start, which no helper moves with the headers.
 *
 * Each entry counts packets, bytes, drops and the last time it was used; userspace reads them
 * back into the core's accounting. An allocation's packet and byte rates are enforced here,
 * per allocation over all its entries (`quota`), as a GCRA holding one second of each rate,
 * the same bucket userspace applies (turnd.core.allocation.Allocation.admit).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define CHANNEL_HEADER 4
#define CHUNK 256 /* move_payload bounds n with the mask 0xff: CHUNK must be 256 */
#define MAX_CHUNKS 8
/* Payloads above this go to userspace: the move is bounded for the verifier. */
#define MAX_PAYLOAD (CHUNK * MAX_CHUNKS)
#define RELAY_TTL 64
#define LOOPBACK_IFINDEX 1
#define FAMILY_IPV4 4
#define FAMILY_IPV6 6
#define ROUTE_LOCAL 0xffffffffu
#define BURST_NS 1000000000ull

/* Addresses are 16 bytes; an IPv4 one fills the first 4, the rest are zero. */
struct c2p_key {
	__u8 client[16];
	__u8 server[16];
	__be16 client_port;
	__be16 server_port;
	__u16 channel;
	__u8 family;
	__u8 pad;
};

struct p2c_key {
	__u8 peer[16];
	__u8 relay[16];
	__be16 peer_port;
	__be16 relay_port;
	__u8 family;
	__u8 pad[3];
};

/* Where an entry's packets go, and what it relayed. */
struct route {
	__u8 src[16];
	__u8 dst[16];
	__be16 src_port;
	__be16 dst_port;
	__u16 channel;  /* p2c: the ChannelData number to add */
	__u16 pad;
	__u32 oif;      /* egress interface; ROUTE_LOCAL: the destination is this host */
	__u32 quota_id; /* 0: no rate limit */
	__u64 packets;
	__u64 bytes;
	__u64 dropped;
	__u64 last_ns;
};

struct quota {
	struct bpf_spin_lock lock;
	__u32 pad;
	__u64 ns_per_packet;    /* 0: no packet rate */
	__u64 ns_per_byte_q16;  /* ns per byte << 16; 0: no byte rate */
	__u64 tat_packets;      /* GCRA theoretical arrival times */
	__u64 tat_bytes;
};

enum {
	STAT_TO_PEER,
	STAT_TO_CLIENT,
	STAT_DROPPED_RATE,
	STAT_ERRORS,
	STAT_PASSED_MTU,
	STAT_COUNT,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct c2p_key);
	__type(value, struct route);
} c2p SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct p2c_key);
	__type(value, struct route);
} p2c SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct quota);
} quotas SEC(".maps");

/* One chunk of payload in flight per CPU (the BPF stack holds 512 bytes in all). */
struct chunk {
	__u8 bytes[CHUNK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct chunk);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&stats, &index);

	if (value)
		*value += 1;
}

/* GCRA over one second of both rates: 1 admits (and charges), 0 is over the rate. */
static __always_inline int admit(__u32 quota_id, __u32 size)
{
	struct quota *q;
	__u64 now, tat_p, tat_b;
	int ok = 1;

	if (!quota_id)
		return 1;
	q = bpf_map_lookup_elem(&quotas, &quota_id);
	if (!q)
		return 1;
	now = bpf_ktime_get_ns();
	bpf_spin_lock(&q->lock);
	tat_p = q->tat_packets > now ? q->tat_packets : now;
	tat_b = q->tat_bytes > now ? q->tat_bytes : now;
	tat_p += q->ns_per_packet;
	tat_b += (size * q->ns_per_byte_q16 + 0xffff) >> 16;
	if ((q->ns_per_packet && tat_p - now > BURST_NS) ||
	    (q->ns_per_byte_q16 && tat_b - now > BURST_NS))
		ok = 0;
	if (ok) {
		q->tat_packets = tat_p;
		q->tat_bytes = tat_b;
	}
	bpf_spin_unlock(&q->lock);
	return ok;
}

/* Move `len` payload bytes from `from` to `to` (4 bytes apart) inside the packet. */
static __always_inline int move_payload(struct __sk_buff *skb, __u32 from, __u32 to, __u32 len)
{
	__u32 zero = 0;
	struct chunk *buf = bpf_map_lookup_elem(&scratch, &zero);
	int forward = to < from;

	if (!buf)
		return -1;
	for (int k = 0; k < MAX_CHUNKS; k++) {
		__u32 chunks = (len + CHUNK - 1) / CHUNK;
		__u32 i, off, n;

		if (k >= chunks)
			break;
		i = forward ? k : chunks - 1 - k; /* growing: last chunk first */
		off = i * CHUNK;
		n = len - off;
		if (n > CHUNK)
			n = CHUNK;
		/* n is 1..CHUNK (k < chunks); say so on the very register the helpers get, which
		 * the verifier tracks (a C check may land on a copy clang made of n). */
		asm volatile("%0 += -1; %0 &= 0xff; %0 += 1" : "+r"(n));
		if (bpf_skb_load_bytes(skb, from + off, buf->bytes, n))
			return -1;
		if (bpf_skb_store_bytes(skb, to + off, buf->bytes, n, BPF_F_RECOMPUTE_CSUM))
			return -1;
	}
	return 0;
}

/* Whether the rewritten packet can be delivered from here. A destination on this host is
 * reached by going on up the stack, which only accepts the relay's (local) source address on a
 * packet that came in on lo with its sender's route: from another interface it is a martian
 * (IP_LOCAL_SOURCE), so that direction stays in userspace. */
static __always_inline int deliverable(struct __sk_buff *skb, struct route *r)
{
	return r->oif != ROUTE_LOCAL || skb->ingress_ifindex == LOOPBACK_IFINDEX;
}

/* Hand the rewritten packet to its destination. */
static __always_inline int deliver(struct __sk_buff *skb, __u32 oif)
{
	if (oif == ROUTE_LOCAL)
		return TC_ACT_OK; /* on up the stack, to the local socket (deliverable() holds) */
	return bpf_redirect_neigh(oif, NULL, 0, 0);
}

struct parsed {
	__u32 l4;       /* offset of the UDP header */
	__u32 ip_csum;  /* offset of the IPv4 header checksum; 0 for IPv6 */
	__u16 udp_len;
	__u8 family;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__be16 csum;
};

static __always_inline int parse(struct __sk_buff *skb, struct parsed *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp;

	if (skb->gso_size)
		return -1; /* a GRO/GSO aggregate: userspace splits it */
	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return -1;
		if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
			return -1;
		if (ip->frag_off & bpf_htons(0x3fff)) /* MF or an offset: a fragment */
			return -1;
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return -1;
		if (bpf_ntohs(ip->tot_len) != sizeof(*ip) + bpf_ntohs(udp->len))
			return -1;
		p->family = FAMILY_IPV4;
		__builtin_memset(p->saddr, 0, 32);
		__builtin_memcpy(p->saddr, &ip->saddr, 4);
		__builtin_memcpy(p->daddr, &ip->daddr, 4);
		p->ip_csum = sizeof(*eth) + 10;
		p->l4 = sizeof(*eth) + sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return -1;
		if (ip6->nexthdr != IPPROTO_UDP) /* extension headers: userspace */
			return -1;
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > end)
			return -1;
		if (bpf_ntohs(ip6->payload_len) != bpf_ntohs(udp->len))
			return -1;
		p->family = FAMILY_IPV6;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		p->ip_csum = 0;
		p->l4 = sizeof(*eth) + sizeof(*ip6);
	} else {
		return -1;
	}
	p->udp_len = bpf_ntohs(udp->len);
	p->sport = udp->source;
	p->dport = udp->dest;
	p->csum = udp->check;
	if (p->udp_len < sizeof(*udp))
		return -1;
	return 0;
}

/* Rewrite the IP and UDP headers for `r`, the UDP length changing by `delta` (+-4) and the
 * 4 bytes after the UDP header being `old_word` before and `new_word` after. */
static __always_inline int rewrite(struct __sk_buff *skb, struct parsed *p, struct route *r,
				   int delta, __be32 old_word, __be32 new_word)
{
	__u16 new_udp_len = p->udp_len + delta;
	__be32 from[9] = {}, to[9] = {};
	__be32 l4_from[3], l4_to[3];
	__s64 pseudo, content;
	int words = p->family == FAMILY_IPV4 ? 2 : 8;

	/* Pseudo-header: addresses and the UDP length (RFC 768, RFC 8200 §8.1). */
	__builtin_memcpy(from, p->saddr, 16);
	__builtin_memcpy(from + 4, p->daddr, 16);
	__builtin_memcpy(to, r->src, 16);
	__builtin_memcpy(to + 4, r->dst, 16);
	if (words == 2) {
		from[1] = from[4];
		to[1] = to[4];
	}
	from[8] = bpf_htonl(p->udp_len);
	to[8] = bpf_htonl(new_udp_len);
	if (words == 2) {
		from[2] = from[8];
		to[2] = to[8];
		pseudo = bpf_csum_diff(from, 12, to, 12, 0);
	} else {
		pseudo = bpf_csum_diff(from, 36, to, 36, 0);
	}
	/* What the checksum covers beyond the pseudo-header: ports, length, the 4 bytes. */
	l4_from[0] = ((__u32)p->dport << 16) | p->sport;
	l4_to[0] = ((__u32)r->dst_port << 16) | r->src_port;
	l4_from[1] = bpf_htonl(p->udp_len);
	l4_to[1] = bpf_htonl(new_udp_len);
	l4_from[2] = old_word;
	l4_to[2] = new_word;
	content = bpf_csum_diff(l4_from, 12, l4_to, 12, 0);
	if (pseudo < 0 || content < 0)
		return -1;

	if (p->family == FAMILY_IPV4) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip, sizeof(ip)))
			return -1;
		ip.saddr = to[0];
		ip.daddr = to[1];
		ip.tot_len = bpf_htons(sizeof(ip) + new_udp_len);
		ip.ttl = RELAY_TTL;
		ip.check = 0;
		__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)&ip, sizeof(ip), 0);
		if (sum < 0)
			return -1;
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		ip.check = ~sum & 0xffff;
		if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &ip, sizeof(ip),
					BPF_F_RECOMPUTE_CSUM))
			return -1;
	} else {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip6, sizeof(ip6)))
			return -1;
		__builtin_memcpy(&ip6.saddr, r->src, 16);
		__builtin_memcpy(&ip6.daddr, r->dst, 16);
		ip6.payload_len = bpf_htons(new_udp_len);
		ip6.hop_limit = RELAY_TTL;
		if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &ip6, sizeof(ip6),
					BPF_F_RECOMPUTE_CSUM))
			return -1;
	}
	struct udphdr udp = {
		.source = r->src_port,
		.dest = r->dst_port,
		.len = bpf_htons(new_udp_len),
		.check = p->csum,
	};
	if (bpf_skb_store_bytes(skb, p->l4, &udp, sizeof(udp), BPF_F_RECOMPUTE_CSUM))
		return -1;
	__u32 csum_off = p->l4 + 6;
	if (bpf_l4_csum_replace(skb, csum_off, 0, pseudo, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0))
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, 0, content, BPF_F_MARK_MANGLED_0))
		return -1;
	return 0;
}

/* Whether the packet, grown by `delta` bytes, fits `r`'s egress MTU. */
static __always_inline int fits(struct __sk_buff *skb, struct route *r, int delta)
{
	__u32 mtu = 0;

	if (r->oif == ROUTE_LOCAL)
		return 1;
	return bpf_check_mtu(skb, r->oif, &mtu, delta, 0) == BPF_MTU_CHK_RET_SUCCESS;
}

/* Frame the datagram parsed in `p` as ChannelData for `r`'s client (peer -> client). */
static __always_inline int frame_for_client(struct __sk_buff *skb, struct parsed *p,
					    struct route *r, __u32 plen)
{
	__u32 payload = p->l4 + sizeof(struct udphdr);
	__be32 head = bpf_htonl(((__u32)r->channel << 16) | plen);

	if (bpf_skb_change_tail(skb, skb->len + CHANNEL_HEADER, 0))
		return -1;
	if (move_payload(skb, payload, payload + CHANNEL_HEADER, plen))
		return -1;
	if (bpf_skb_store_bytes(skb, payload, &head, sizeof(head), BPF_F_RECOMPUTE_CSUM))
		return -1;
	if (rewrite(skb, p, r, CHANNEL_HEADER, 0, head))
		return -1;
	__sync_fetch_and_add(&r->packets, 1);
	__sync_fetch_and_add(&r->bytes, plen);
	r->last_ns = bpf_ktime_get_ns();
	count(STAT_TO_CLIENT);
	return 0;
}

/* Charge `r`'s allocation for `plen` bytes; 0 when over its rate (dropped and counted). */
static __always_inline int charge(struct route *r, __u32 plen)
{
	if (admit(r->quota_id, plen))
		return 1;
	__sync_fetch_and_add(&r->dropped, 1);
	count(STAT_DROPPED_RATE);
	return 0;
}

static __always_inline int client_to_peer(struct __sk_buff *skb, struct parsed *p, __be32 head)
{
	struct c2p_key key = {};
	__u32 plen = p->udp_len - sizeof(struct udphdr) - CHANNEL_HEADER;
	struct route *r, *next = NULL;

	if (p->udp_len < sizeof(struct udphdr) + CHANNEL_HEADER)
		return TC_ACT_UNSPEC;
	__builtin_memcpy(key.client, p->saddr, 16);
	__builtin_memcpy(key.server, p->daddr, 16);
	key.client_port = p->sport;
	key.server_port = p->dport;
	key.channel = bpf_ntohl(head) >> 16;
	key.family = p->family;
	r = bpf_map_lookup_elem(&c2p, &key);
	if (!r) {
		/* A listener bound to a wildcard address is installed with a zero server address. */
		__builtin_memset(key.server, 0, sizeof(key.server));
		r = bpf_map_lookup_elem(&c2p, &key);
		if (!r)
			return TC_ACT_UNSPEC;
	}
	/* Exactly header + length: a padded or short one is userspace's (it counts a short one). */
	if ((bpf_ntohl(head) & 0xffff) != plen || plen > MAX_PAYLOAD)
		return TC_ACT_UNSPEC;
	if (r->oif == ROUTE_LOCAL) {
		/* The peer may be another allocation's relayed address here (two clients of this
		 * server relaying to each other): then both legs are done in this one pass. */
		struct p2c_key chained = {};

		__builtin_memcpy(chained.peer, r->src, 16);
		__builtin_memcpy(chained.relay, r->dst, 16);
		chained.peer_port = r->src_port;
		chained.relay_port = r->dst_port;
		chained.family = p->family;
		next = bpf_map_lookup_elem(&p2c, &chained);
	}
	/* Chained, the packet leaves as long as it came (4 bytes off, 4 bytes on). */
	if (next ? !deliverable(skb, next) || !fits(skb, next, 0) : !deliverable(skb, r))
		return TC_ACT_UNSPEC;
	if (!charge(r, plen))
		return TC_ACT_SHOT;
	__u32 payload = p->l4 + sizeof(struct udphdr);
	if (move_payload(skb, payload + CHANNEL_HEADER, payload, plen))
		goto error;
	if (bpf_skb_change_tail(skb, skb->len - CHANNEL_HEADER, 0))
		goto error;
	if (rewrite(skb, p, r, -CHANNEL_HEADER, head, 0))
		goto error;
	__sync_fetch_and_add(&r->packets, 1);
	__sync_fetch_and_add(&r->bytes, plen);
	r->last_ns = bpf_ktime_get_ns();
	count(STAT_TO_PEER);
	if (!next)
		return deliver(skb, r->oif);
	/* The second leg: the datagram from the relayed address, as the other relay gets it. */
	struct parsed q;

	if (parse(skb, &q))
		goto error;
	if (!charge(next, plen))
		return TC_ACT_SHOT;
	if (frame_for_client(skb, &q, next, plen))
		goto error;
	return deliver(skb, next->oif);
error:
	count(STAT_ERRORS);
	return TC_ACT_SHOT; /* half rewritten: it cannot go on */
}

static __always_inline int peer_to_client(struct __sk_buff *skb, struct parsed *p)
{
	struct p2c_key key = {};
	__u32 plen = p->udp_len - sizeof(struct udphdr);
	struct route *r;

	__builtin_memcpy(key.peer, p->saddr, 16);
	__builtin_memcpy(key.relay, p->daddr, 16);
	key.peer_port = p->sport;
	key.relay_port = p->dport;
	key.family = p->family;
	r = bpf_map_lookup_elem(&p2c, &key);
	if (!r)
		return TC_ACT_UNSPEC;
	if (plen > MAX_PAYLOAD || plen + CHANNEL_HEADER > 0xffff - sizeof(struct udphdr) ||
	    !deliverable(skb, r))
		return TC_ACT_UNSPEC;
	if (!fits(skb, r, CHANNEL_HEADER)) {
		count(STAT_PASSED_MTU);
		return TC_ACT_UNSPEC;
	}
	if (!charge(r, plen))
		return TC_ACT_SHOT;
	if (frame_for_client(skb, p, r, plen)) {
		count(STAT_ERRORS);
		return TC_ACT_SHOT;
	}
	return deliver(skb, r->oif);
}

SEC("tc")
int turnd_relay(struct __sk_buff *skb)
{
	struct parsed p;
	__be32 head = 0;

	if (parse(skb, &p))
		return TC_ACT_UNSPEC;
	if (p.csum == 0)
		return TC_ACT_UNSPEC; /* IPv4 without a UDP checksum: nothing to update from */
	if (p.udp_len >= sizeof(struct udphdr) + CHANNEL_HEADER &&
	    bpf_skb_load_bytes(skb, p.l4 + sizeof(struct udphdr), &head, sizeof(head)) == 0) {
		__u8 first = bpf_ntohl(head) >> 24;

		if (first >= 0x40 && first <= 0x7f) { /* RFC 7983: ChannelData */
			int verdict = client_to_peer(skb, &p, head);

			if (verdict != TC_ACT_UNSPEC)
				return verdict;
			/* parse() again: a miss left the packet as it was */
		}
	}
	return peer_to_client(skb, &p);
}

char LICENSE[] SEC("license") = "GPL";
