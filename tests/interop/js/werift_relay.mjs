// Run werift's RTCPeerConnection (a WebRTC stack in plain Node.js) for the interop matrix.
//
// Reads one JSON job from stdin: {"ca", "cells": [{"id", "iceServer", "messages", "size",
// "timeoutMs"}]} and prints one JSON line per cell: {"id", ...what echoThroughRelay reports}.
// TURN over TLS verifies turnd's certificate against "ca" (its self-signed certificate, whose
// SANs hold 127.0.0.1 and ::1). werift has no getStats for candidates, so the relay protocol it
// used is read from turnd's own accounting by the matrix, not from here.
import { readFileSync } from "node:fs";
import { RTCPeerConnection } from "werift";
import { echoThroughRelay } from "./echo.mjs";

let text = "";
for await (const chunk of process.stdin) {
  text += chunk;
}
const job = JSON.parse(text);
const ca = job.ca ? readFileSync(job.ca) : undefined;
for (const cell of job.cells) {
  let result;
  try {
    result = await echoThroughRelay(RTCPeerConnection, {
      ...cell,
      extraConfig: { turnTlsOptions: ca ? { ca } : undefined },
    });
  } catch (error) {
    result = { error: `werift failed: ${error.message}` };
  }
  console.log(JSON.stringify({ id: cell.id, ...result }));
}
// werift keeps timers and sockets alive after close(); the results are printed, so end here.
process.exit(0);
