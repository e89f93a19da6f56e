module.exports = require("./temp-root.js").teardown;
