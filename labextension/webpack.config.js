// Module ids by order, not by a hash of paths: the container entry's identifier holds the
// absolute path of the checkout, so hashed ids made every clone build different bytes.
module.exports = { optimization: { moduleIds: 'natural', chunkIds: 'natural' } };
