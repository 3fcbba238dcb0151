"""Results as data: frozen, labelled arrays with their means and intervals, and their files
(results.json, .npy/.npz, graph.json). Never imports the report or a method."""
