// Two RTCPeerConnections forced to relay (iceTransportPolicy "relay"), one data channel, every
// message echoed back: the one exchange both WebRTC stacks of the matrix run, written against the
// W3C API so that the same function runs in Chromium's page (see chromium_relay.mjs, which passes
// its source to page.evaluate) and on werift in Node.js (werift_relay.mjs).
//
// It must stay self-contained: no imports, no names from outside, because Chromium receives it as
// text. Signalling is direct (each side hands its candidates to the other), so ICE can only pair
// the two relay candidates: every byte goes client -> TURN server -> relay -> relay -> client.
//
// Returns what the stack itself reports, never a verdict: how many messages were sent, how many
// the answering side received, how many echoes came back byte-exact and in order, and, where the
// stack has getStats, which relay protocol each side's selected local candidate used.
//
// Two options make a lost datagram visible and spread the run over time: "unreliable" opens the
// channel with maxRetransmits 0 (SCTP resends nothing, so a datagram the relay loses is a message
// lost; the count is echoed < messages), and "intervalMs" waits that long between messages.

export async function echoThroughRelay(RTCPeerConnection, job) {
  const { iceServer, messages, size, timeoutMs } = job;
  const intervalMs = job.intervalMs || 0;
  const config = { iceTransportPolicy: "relay", iceServers: [iceServer], ...(job.extraConfig || {}) };
  const result = {
    opened: false,
    sent: 0,
    bytesSent: 0,
    answered: 0,
    echoed: 0,
    bytesEchoed: 0,
    outOfOrder: 0,
    candidates: [],
    relayProtocols: [],
    candidateErrors: [],
    error: null,
  };
  const payload = (i) => `m${i}:`.padEnd(size, "x");
  const within = (promise, what) =>
    Promise.race([
      promise,
      new Promise((_, reject) =>
        setTimeout(() => reject(new Error(`${what}: nothing after ${timeoutMs} ms`)), timeoutMs),
      ),
    ]);
  const offerer = new RTCPeerConnection(config);
  const answerer = new RTCPeerConnection(config);
  const pairs = [
    [offerer, answerer],
    [answerer, offerer],
  ];
  for (const [from, to] of pairs) {
    from.onicecandidate = (event) => {
      const candidate = event.candidate;
      if (candidate && candidate.candidate) {
        result.candidates.push(candidate.candidate);
        Promise.resolve(to.addIceCandidate(candidate)).catch((error) => {
          result.candidateErrors.push(`addIceCandidate: ${error}`);
        });
      }
    };
    from.onicecandidateerror = (event) => {
      result.candidateErrors.push(`${event.errorCode} ${event.errorText} (${event.url})`);
    };
  }
  try {
    answerer.ondatachannel = (event) => {
      const channel = event.channel;
      channel.onmessage = (message) => {
        result.answered += 1;
        channel.send(message.data);
      };
    };
    const channel = offerer.createDataChannel(
      "echo",
      job.unreliable ? { ordered: true, maxRetransmits: 0 } : {},
    );
    const opened = new Promise((resolve) => {
      channel.onopen = () => resolve();
    });
    await offerer.setLocalDescription(await offerer.createOffer());
    await answerer.setRemoteDescription(offerer.localDescription);
    await answerer.setLocalDescription(await answerer.createAnswer());
    await offerer.setRemoteDescription(answerer.localDescription);
    await within(opened, "data channel open");
    result.opened = true;
    const allBack = new Promise((resolve) => {
      channel.onmessage = (message) => {
        const text = typeof message.data === "string" ? message.data : String(message.data);
        if (text === payload(result.echoed)) {
          result.bytesEchoed += text.length;
        } else {
          result.outOfOrder += 1;
        }
        result.echoed += 1;
        if (result.echoed === messages) {
          resolve();
        }
      };
    });
    for (let i = 0; i < messages; i++) {
      channel.send(payload(i));
      result.sent += 1;
      result.bytesSent += size;
      if (intervalMs) {
        await new Promise((resolve) => setTimeout(resolve, intervalMs));
      }
    }
    await within(allBack, `echoes (${result.echoed} of ${messages} so far)`);
    for (const pc of [offerer, answerer]) {
      let stats;
      try {
        stats = await pc.getStats();
      } catch (error) {
        continue; // a stack without candidate statistics: turnd's accounting tells instead
      }
      const byId = new Map();
      if (!stats || typeof stats.forEach !== "function") {
        continue;
      }
      stats.forEach((entry) => byId.set(entry.id, entry));
      stats.forEach((entry) => {
        if (entry.type === "transport" && entry.selectedCandidatePairId) {
          const pair = byId.get(entry.selectedCandidatePairId);
          const local = pair && byId.get(pair.localCandidateId);
          if (local) {
            result.relayProtocols.push(`${local.candidateType}/${local.relayProtocol ?? "?"}`);
          }
        }
      });
    }
  } catch (error) {
    result.error = String(error && error.message ? error.message : error);
  } finally {
    await Promise.resolve(offerer.close());
    await Promise.resolve(answerer.close());
  }
  return result;
}
