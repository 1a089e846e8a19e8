// protobufjs looks up optional modules with eval (its "@protobufjs/inquire"),
// which the web client's Content-Security-Policy forbids (no 'unsafe-eval').
// The bundle maps that module to this one: `long` is bundled, nothing else
// optional is wanted in a browser.
module.exports = function inquire(name) {
  return name === 'long' ? require('long') : null;
};
