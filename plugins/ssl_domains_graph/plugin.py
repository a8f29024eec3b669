"""GraphMAE plugin: metadata and typed config. Imports no torch (``ssl-domains list`` reads this module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ssl_domains import ConfigError, ModalityPlugin, Objective, SSLDataModule, SSLModel, option

if TYPE_CHECKING:  # annotations only: this module must not import torch
    import torch


@dataclass
class GraphMAEConfig:
    """GraphMAE settings. Names follow the reference code's ``configs.yml`` so presets read the same."""

    level: Literal["auto", "node", "graph"] = option(
        "auto", doc="node- or graph-level pretraining; auto: node for one graph, graph for a graph collection"
    )
    # ---- architecture (Hou et al. 2022, §3 and Table 7)
    encoder: Literal["gat", "gin"] = option("gat", doc="encoder type (GAT for node tasks, GIN for graph tasks)")
    decoder: Literal["gat", "gin", "linear", "mlp"] = option("gat", doc="single-layer decoder type")
    num_hidden: int = option(512, doc="total hidden width (for GAT: summed over heads)")
    num_heads: int = option(4, doc="GAT attention heads in the encoder")
    num_out_heads: int = option(1, doc="GAT attention heads in the decoder")
    num_layers: int = option(2, doc="encoder layers")
    activation: Literal["prelu", "relu", "elu", "gelu"] = option("prelu", doc="activation function")
    in_drop: float = option(0.2, doc="feature dropout before every layer")
    attn_drop: float = option(0.1, doc="dropout on GAT attention coefficients")
    negative_slope: float = option(0.2, doc="LeakyReLU slope in GAT attention")
    residual: bool = option(False, doc="residual connections in GAT layers")
    norm: Literal["none", "batchnorm", "layernorm"] = option("none", doc="normalisation after each layer")
    concat_hidden: bool = option(False, doc="feed the decoder the concatenation of all encoder layers")
    # ---- masking and loss (§3.2, §3.3)
    mask_rate: float = option(0.5, doc="share of nodes whose features are masked each step")
    replace_rate: float = option(0.05, doc="share of masked nodes given another node's features instead of [MASK]")
    alpha_l: float = option(3.0, doc="scaling exponent alpha of the scaled cosine error")
    loss_fn: Literal["sce", "mse"] = option("sce", doc="reconstruction loss")
    drop_edge_rate: float = option(0.0, doc="share of edges dropped each step (self-loops are kept)")
    # ---- data
    add_self_loops: bool = option(True, doc="remove, then add one self-loop per node (as the reference does)")
    feature_norm: Literal["row", "standardize", "none"] = option(
        "row", doc="row: L1 row-normalise (PyG NormalizeFeatures, Planetoid); standardize: z-score per column"
    )
    degree_features: bool = option(False, doc="use one-hot node degree as features (reference deg4feat)")
    max_degree: int = option(400, doc="degrees above this share the last one-hot slot")
    pooling: Literal["mean", "sum", "max"] = option("mean", doc="graph-level readout of node embeddings")
    batch_size: int = option(32, doc="graphs per batch (graph level) or seed nodes per batch (neighbor mode)")
    shuffle: bool = option(True, doc="shuffle graphs each epoch (the reference's graph script does not)")
    node_batching: Literal["auto", "full", "neighbor"] = option(
        "auto",
        doc="full: the whole graph each step; neighbor: sampled subgraphs, for graphs too large for one step; auto: "
        "neighbor beyond 500,000 nodes",
    )
    num_neighbors: list[int] = option(
        default_factory=lambda: [10, 10, 10], doc="neighbor mode: neighbors sampled per hop (layers + decoder)"
    )
    num_workers: int = option(0, doc="data-loading worker processes (neighbor and graph modes)")
    # ---- linear probe (reference evaluation.py)
    lr_f: float = option(0.01, doc="probe learning rate (Adam)")
    weight_decay_f: float = option(1e-4, doc="probe weight decay")
    max_epoch_f: int = option(300, doc="probe epochs; the test accuracy is read at the best validation epoch")

    def validate(self) -> None:
        """Raise :class:`ConfigError` on sizes the encoder cannot take."""
        if self.encoder == "gat" and (self.num_heads < 1 or self.num_hidden % self.num_heads):
            raise ConfigError(
                f"graphmae.num_hidden {self.num_hidden} must be divisible by graphmae.num_heads {self.num_heads} "
                "(GAT's width is summed over heads)"
            )


class GraphMAEPlugin(ModalityPlugin[GraphMAEConfig]):
    """GraphMAE: masked graph autoencoder with scaled cosine error (Hou et al., KDD 2022)."""

    name = "graphmae"
    config = GraphMAEConfig
    description = "GraphMAE masked feature reconstruction (GAT/GIN) on PyTorch Geometric graphs, node and graph level"
    paper = (
        "Hou, Liu, Cen, Dong, Yang, Wang, Tang. GraphMAE: Self-Supervised Masked Graph Autoencoders. KDD 2022. "
        "https://arxiv.org/abs/2205.10803"
    )
    extra = "graph"
    requires = ("torch_geometric", "scipy", "pandas", "matplotlib")
    data_formats = (
        "a PyG Planetoid folder (NAME/raw/ind.name.{x,tx,allx,y,ty,ally,graph,test.index}); public split kept",
        "a PyG TUDataset folder (NAME/raw/NAME_A.txt, NAME_graph_indicator.txt, ...); graph-level",
        "a .pt file with a torch_geometric Data, a list of Data, or an InMemoryDataset's processed file",
        "a folder with edges.csv (source,target) and nodes.csv or nodes.parquet (feature columns; optional "
        "'label' and 'split' (train/val/test) columns; optional 'node_id' giving each row's id used in edges.csv)",
        "an extracted OGB node dataset (ogbn_NAME/raw/edge.csv.gz, node-feat.csv.gz, node-label.csv.gz, "
        "split/SCHEME/{train,valid,test}.csv.gz), read without the ogb package; edges made undirected",
    )
    batch_keys = {"x": "float32", "edge_index": "int64", "batch": "int64", "id": "int64"}
    input_spec = {
        "level": "node (one graph) or graph (a collection) embeddings",
        "num_node_features": "node feature width the encoder was built for",
        "node_features": "where node features come from",
        "feature_norm": "how node features are normalised (with training statistics where fitted)",
        "edges": "how edges are prepared",
    }
    run_defaults = {
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 2e-4},
        "trainer": {"max_epochs": 1500, "log_every_n_steps": 1},
    }

    def example_overrides(self) -> dict[str, Any]:
        return {"graphmae": {"num_hidden": 32, "num_heads": 2}}

    def datamodule(self, cfg: GraphMAEConfig, data: Path) -> SSLDataModule:
        from .data import GraphDataModule

        return GraphDataModule(Path(data), cfg)

    def model(self, cfg: GraphMAEConfig, datamodule: SSLDataModule) -> SSLModel:
        from .model import GraphMAE

        return GraphMAE(cfg, in_dim=datamodule.num_features, level=datamodule.level)

    def objective(self, cfg: GraphMAEConfig) -> Objective:
        from .objective import GraphMAEObjective

        return GraphMAEObjective(
            mask_rate=cfg.mask_rate, replace_rate=cfg.replace_rate, alpha_l=cfg.alpha_l, loss_fn=cfg.loss_fn,
            drop_edge_rate=cfg.drop_edge_rate,
        )  # fmt: skip

    def make_example_data(self, root: Path) -> Path:
        from .data import write_example_graph

        return write_example_graph(Path(root))

    def evaluate(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: GraphMAEConfig, device: torch.device
    ) -> dict[str, float] | None:
        from .evaluation import evaluate_graphmae

        return evaluate_graphmae(model, datamodule, cfg, device)

    def visualize(
        self, model: SSLModel, datamodule: SSLDataModule, cfg: GraphMAEConfig, out_dir: Path, device: torch.device
    ) -> list[Path]:
        from .figures import plot_embedding_projection

        return plot_embedding_projection(model, datamodule, out_dir, device)
