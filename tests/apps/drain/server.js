// Node's http server as it is usually written: no signal handler (SIGTERM
// kills it mid-request), 30 ms of work per request. Answers its pid.
// Usage: node server.js PORT
const http = require('http');

http.createServer((req, res) => {
  setTimeout(() => {
    const body = `${process.pid}\n`;
    res.writeHead(200, { 'Content-Length': Buffer.byteLength(body), Connection: 'close' });
    res.end(body);
  }, 30);
}).listen(Number(process.argv[2]));
