#!/usr/bin/env node
// relaunch example: a Node.js HTTP server that answers every request with its
// pid, serving the listener relaunch hands it at fd 3.
//
//   relaunch -l 127.0.0.1:8000 -- node examples/node_server.js
//
// Without LISTEN_FDS it binds 127.0.0.1:$PORT (default 8000) itself.
// SIGTERM/SIGINT: stop accepting, let in-flight requests finish, exit 0.
'use strict';
const http = require('http');

const server = http.createServer((req, res) => {
  const body = `${process.pid}\n`;
  res.writeHead(200, {
    'Content-Type': 'text/plain',
    'Content-Length': Buffer.byteLength(body),
    'Connection': 'close',
  });
  res.end(body);
});

const inherited =
  Number(process.env.LISTEN_FDS) >= 1 &&
  process.env.LISTEN_PID === String(process.pid);
if (inherited) {
  // Node calls listen() again on the shared socket, with a backlog of 511
  // unless told otherwise. Ask for more than the kernel allows, which it caps
  // at somaxconn (relaunch's default). Node 20 ignores `backlog` in the
  // options for an fd, hence the second argument too.
  server.listen({ fd: 3, backlog: 65535 }, 65535);
} else {
  const port = Number(process.env.PORT || 8000);
  console.error(`node_server: no LISTEN_FDS, binding 127.0.0.1:${port} myself`);
  server.listen(port, '127.0.0.1');
}
server.on('listening', () => {
  const a = server.address();
  console.error(`node_server: pid ${process.pid} serving ${a.address}:${a.port}`);
});
server.on('error', (err) => {
  console.error(`node_server: ${err.message}`);
  process.exit(1);
});

function stop() {
  server.close(() => process.exit(0)); // waits for open connections
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
